/* exec from a thread that is not the leader: usage exec_thread HOOK NAME
 * Runs the hook through system(), prints "hook=RC", waits for one byte on
 * stdin, then a second thread execs PROGRAM ARGS... (argv[3]...); the kernel
 * gives it the leader's tid. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static char **program;

static void *exec_it(void *arg)
{
    (void)arg;
    execv(program[0], program);
    perror("execv");
    exit(99);
}

int main(int argc, char **argv)
{
    char buf[1];
    char command[4096];
    pthread_t thread;

    if (argc < 4)
        return 2;
    snprintf(command, sizeof(command), "%s %s %d", argv[1], argv[2], (int)getpid());
    printf("hook=%d\n", WEXITSTATUS(system(command)));
    fflush(stdout);
    if (read(0, buf, 1) != 1)
        return 3;
    program = argv + 3;
    pthread_create(&thread, NULL, exec_it, NULL);
    for (;;)
        pause();
}
