/* Crash targets for the crash tests.  usage: crash HOOK_COMMAND NAME MODE
 * Runs the hook through system() as Postfix's debug_process() does, prints
 * "hook=RC", waits for one byte on stdin, then does MODE:
 *   segv     null dereference three calls deep (crash_here < level_two < level_one < main)
 *   abort    abort()
 *   thread   a second thread dereferences NULL (thread_crash < thread_main)
 *   handler  its own SIGSEGV handler catches a raise(SIGSEGV), prints "handled", exits 7
 *   exit3    exit(3)
 *   wait     print "waiting" and block in read() until the next byte (for signals from outside)
 *   fpe      integer division by zero in divide_here (SIGFPE, FPE_INTDIV)
 *   bus      print "address=ADDRESS" and read a shared mapping of an empty file there (SIGBUS, BUS_ADRERR)
 * MODE may also be given with HOOK_COMMAND "-" to skip the hook (untraced baseline).
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include "hook.h"  /* run_hook(); stdio, stdlib, string, sys/wait, unistd */
#include <unistd.h>

static volatile int *null_pointer;
static volatile int zero;

__attribute__((noinline)) static int crash_here(int depth)
{
    return *null_pointer + depth;
}

__attribute__((noinline)) static int level_two(int depth)
{
    return crash_here(depth + 1) + 1;
}

__attribute__((noinline)) static int level_one(int depth)
{
    return level_two(depth + 1) + 1;
}

__attribute__((noinline)) static void thread_crash(void)
{
    *null_pointer = 42;
}

__attribute__((noinline)) static int divide_here(int dividend)
{
    return dividend / zero;
}

static int bus_error(void)
{
    char path[] = "/tmp/tracerd-crash-bus-XXXXXX";
    volatile char *map;
    int fd = mkstemp(path);

    if (fd < 0)
        return 2;
    unlink(path);
    map = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED)
        return 2;
    printf("address=%p\n", (void *) map);
    fflush(stdout);
    return map[0];
}

static void *thread_main(void *arg)
{
    (void) arg;
    thread_crash();
    return NULL;
}

static void on_segv(int sig)
{
    (void) sig;
    if (write(1, "handled\n", 8) != 8)
        _exit(9);
    _exit(7);
}

int main(int argc, char **argv)
{
    char buf[1];
    pthread_t thread;

    if (argc != 4) {
        fprintf(stderr, "usage: crash HOOK_COMMAND NAME MODE\n");
        return 2;
    }
    run_hook(argv[1], argv[2]);
    if (read(0, buf, 1) < 0)
        return 2;
    if (strcmp(argv[3], "segv") == 0)
        return level_one(0);
    if (strcmp(argv[3], "abort") == 0)
        abort();
    if (strcmp(argv[3], "thread") == 0) {
        pthread_create(&thread, NULL, thread_main, NULL);
        pthread_join(thread, NULL);
        return 0;
    }
    if (strcmp(argv[3], "handler") == 0) {
        signal(SIGSEGV, on_segv);
        raise(SIGSEGV);
        return 1;
    }
    if (strcmp(argv[3], "fpe") == 0)
        return divide_here(1);
    if (strcmp(argv[3], "bus") == 0)
        return bus_error();
    if (strcmp(argv[3], "exit3") == 0)
        exit(3);
    if (strcmp(argv[3], "wait") == 0) {
        printf("waiting\n");
        fflush(stdout);
        for (;;) {
            if (read(0, buf, 1) <= 0)
                return 0;
        }
    }
    return 2;
}
