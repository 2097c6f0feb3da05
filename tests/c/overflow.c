/* Stack overflow targets.  usage: overflow HOOK_COMMAND NAME MODE
 * Runs the hook through system() as Postfix's debug_process() does, prints
 * "hook=RC", waits for one byte on stdin, prints "start=SECONDS" (CLOCK_MONOTONIC,
 * the same clock as Python's time.monotonic()), then does MODE:
 *   main    infinite recursion with a 2 KiB local array (recurse < main): ~3950 frames in 8 MiB
 *   thread  the same in a second thread (recurse < thread_main), on an 8 MiB stack
 *   deep    mutual recursion of two small frames (ping < pong < ping ...): ~130000 frames
 * HOOK_COMMAND "-" skips the hook (untraced baseline).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "hook.h"  /* run_hook(); stdio, stdlib, string, sys/wait, unistd */
#include <time.h>
#include <unistd.h>

static volatile long sink;

#pragma GCC diagnostic ignored "-Winfinite-recursion"

__attribute__((noinline)) static long recurse(long depth)
{
    volatile char buffer[2048];

    memset((char *) buffer, (int) depth, sizeof(buffer));
    sink = buffer[depth % sizeof(buffer)];
    return recurse(depth + 1) + buffer[0];
}

__attribute__((noinline)) static long pong(long depth);

__attribute__((noinline)) static long ping(long depth)
{
    return pong(depth + 1) + 1;
}

__attribute__((noinline)) static long pong(long depth)
{
    return ping(depth + 1) + 1;
}

static void *thread_main(void *arg)
{
    (void) arg;
    sink = recurse(0);
    return NULL;
}

int main(int argc, char **argv)
{
    char buf[1];
    struct timespec now;
    pthread_t thread;
    pthread_attr_t attr;

    if (argc != 4) {
        fprintf(stderr, "usage: overflow HOOK_COMMAND NAME MODE\n");
        return 2;
    }
    run_hook(argv[1], argv[2]);
    if (read(0, buf, 1) < 0)
        return 2;
    clock_gettime(CLOCK_MONOTONIC, &now);
    printf("start=%ld.%09ld\n", (long) now.tv_sec, now.tv_nsec);
    fflush(stdout);
    if (strcmp(argv[3], "main") == 0)
        return (int) recurse(0);
    if (strcmp(argv[3], "deep") == 0)
        return (int) ping(0);
    if (strcmp(argv[3], "thread") == 0) {
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 8 << 20);
        pthread_create(&thread, &attr, thread_main, NULL);
        pthread_join(thread, NULL);
        return 0;
    }
    return 2;
}
