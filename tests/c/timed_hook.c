/* Times system(COMMAND) as Postfix's debug_process() would run it.
 *
 * usage: timed_hook COMMAND_PREFIX NAME
 *   runs "COMMAND_PREFIX NAME PID" through system() and prints
 *   "elapsed_us=N status=S", then does one write and exits 0.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    char command[8192];
    struct timespec start, end;
    int status;

    if (argc != 3)
        return 2;
    snprintf(command, sizeof(command), "%s %s %ld", argv[1], argv[2], (long) getpid());
    clock_gettime(CLOCK_MONOTONIC, &start);
    status = system(command);
    clock_gettime(CLOCK_MONOTONIC, &end);
    printf("elapsed_us=%ld status=%d\n",
           (long) ((end.tv_sec - start.tv_sec) * 1000000L + (end.tv_nsec - start.tv_nsec) / 1000),
           WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    fflush(stdout);
    return 0;
}
