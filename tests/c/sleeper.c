/* A process that is nobody's child of interest: it prints "ready", then
 * writes "tick" to /dev/null every 50 ms until stdin closes or it is killed. */
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

int main(void)
{
    char buf[64];
    int null = open("/dev/null", O_WRONLY);

    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        if (read(0, buf, sizeof(buf)) == 0)
            return 0;
        if (write(null, "tick\n", 5) != 5)
            return 1;
        usleep(50000);
    }
}
