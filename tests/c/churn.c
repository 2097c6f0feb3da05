/* Threads that come and go: prints "ready", then creates and joins 8
 * threads in a loop until ROUNDS rounds are done (argv[1], default 2000; 0:
 * no limit) or stdin closes, and exits 0.  A thread left in a ptrace-stop hangs it in
 * pthread_join: the tests see that as a target that never exits. */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void *work(void *arg)
{
    volatile unsigned long n = 0;
    for (int i = 0; i < 2000; i++)
        n += (unsigned long)i;
    return arg;
}

int main(int argc, char **argv)
{
    long rounds = argc > 1 ? atol(argv[1]) : 2000;
    char buf[16];

    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    printf("ready\n");
    fflush(stdout);
    for (long r = 0; rounds == 0 || r < rounds; r++) {
        pthread_t t[8];
        if (read(0, buf, sizeof(buf)) == 0)
            break;
        for (int i = 0; i < 8; i++)
            if (pthread_create(&t[i], NULL, work, NULL) != 0)
                return 2;
        for (int i = 0; i < 8; i++)
            pthread_join(t[i], NULL);
    }
    return 0;
}
