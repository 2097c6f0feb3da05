/* A target with known system calls for the syscount tracer's tests and bench.
 *
 * usage: syscount_target HOOK_COMMAND NAME GETPPIDS CLOSES THREADS EXIT_CODE
 *   runs "HOOK_COMMAND NAME PID" through system() ("-": none), prints
 *   "hook=RC", then per byte read on stdin does one round: THREADS threads
 *   and one forked child each make GETPPIDS getppid() calls and CLOSES
 *   close(-1) calls (EBADF), all through syscall(2); prints "round N" when all
 *   are done (child reaped).  At end of file on stdin it exits with EXIT_CODE.
 *   A round is (THREADS + 1) * GETPPIDS getppid and (THREADS + 1) * CLOSES
 *   failed close.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static long getppids, closes;

static void work(void)
{
    long i;
    for (i = 0; i < getppids; i++)
        syscall(SYS_getppid);
    for (i = 0; i < closes; i++)
        syscall(SYS_close, -1);
}

static void *thread_main(void *arg)
{
    (void) arg;
    work();
    return NULL;
}

int main(int argc, char **argv)
{
    char command[8192], buf[1];
    int status = 0, threads, round = 0, i;
    pthread_t tids[64];
    pid_t child;

    if (argc != 7) {
        fprintf(stderr, "usage: syscount_target HOOK_COMMAND NAME GETPPIDS CLOSES THREADS EXIT_CODE\n");
        return 2;
    }
    getppids = atol(argv[3]);
    closes = atol(argv[4]);
    threads = atoi(argv[5]);
    if (threads < 0 || threads > 64)
        return 2;
    if (strcmp(argv[1], "-") != 0) {
        snprintf(command, sizeof(command), "%s %s %ld", argv[1], argv[2], (long) getpid());
        status = system(command);
        status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    printf("hook=%d\n", status);
    fflush(stdout);
    while (read(0, buf, 1) == 1) {
        for (i = 0; i < threads; i++)
            if (pthread_create(&tids[i], NULL, thread_main, NULL) != 0)
                return 2;
        child = fork();
        if (child == 0) {
            work();
            _exit(0);
        }
        for (i = 0; i < threads; i++)
            pthread_join(tids[i], NULL);
        if (child < 0 || waitpid(child, NULL, 0) != child)
            return 2;
        printf("round %d\n", ++round);
        fflush(stdout);
    }
    return atoi(argv[6]);
}
