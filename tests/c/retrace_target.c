/* Targets for the cores and retrace tests.  usage: retrace_target HOOK_COMMAND NAME MODE
 * Runs the hook through system() as Postfix's debug_process() does (HOOK_COMMAND "-" skips it),
 * prints "hook=RC", waits for one byte on stdin, then does MODE:
 *   deepN    recurses N frames deep (descend) and dereferences NULL in retrace_crash_here
 *   assert   a failing assert() (SIGABRT, glibc's __abort_msg set)
 *   lib      calls retrace_lib_crash() of libretracelib.so (tests/c/retracelib.c), which dereferences NULL
 *   memN     touches N MB of memory (half random, half zero) and dereferences NULL
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "hook.h"  /* run_hook(); stdio, stdlib, string, sys/wait, unistd */
#include <unistd.h>

int retrace_lib_crash(int);

static volatile int *null_pointer;

__attribute__((noinline)) static int retrace_crash_here(int depth)
{
    return *null_pointer + depth;
}

__attribute__((noinline)) static int descend(int depth, int bottom)
{
    if (depth >= bottom)
        return retrace_crash_here(depth) + 1;
    return descend(depth + 1, bottom) + 1;
}

__attribute__((noinline)) static int check_invariant(int value)
{
    assert(value == 42 && "the invariant holds");
    return value;
}

static int touch_memory(long megabytes)
{
    size_t size = (size_t) megabytes << 20;
    unsigned char *block = malloc(size);
    unsigned int seed = 12345;

    if (block == NULL)
        return 2;
    memset(block, 0, size);
    for (size_t i = 0; i < size / 2; i++) {
        seed = seed * 1103515245u + 12345u;
        block[i] = (unsigned char) (seed >> 16);
    }
    printf("touched=%ld\n", megabytes);
    fflush(stdout);
    return retrace_crash_here(block[0]);
}

int main(int argc, char **argv)
{
    char buf[1];

    if (argc != 4) {
        fprintf(stderr, "usage: retrace_target HOOK_COMMAND NAME MODE\n");
        return 2;
    }
    run_hook(argv[1], argv[2]);
    if (read(0, buf, 1) < 0)
        return 2;
    if (strncmp(argv[3], "deep", 4) == 0)
        return descend(0, atoi(argv[3] + 4));
    if (strcmp(argv[3], "assert") == 0)
        return check_invariant(argc);
    if (strcmp(argv[3], "lib") == 0)
        return retrace_lib_crash(argc);
    if (strncmp(argv[3], "mem", 3) == 0)
        return touch_memory(atol(argv[3] + 3));
    return 2;
}
