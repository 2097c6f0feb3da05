/* Distinct bugs for the signature tests.  usage: bugs HOOK_COMMAND NAME MODE
 * Runs the hook through system() as Postfix's debug_process() does, prints
 * "hook=RC", waits for one byte on stdin, then does MODE:
 *   assert_a  a failed assert() in check_invariant (SIGABRT)
 *   assert_b  a failed assert() in check_other (SIGABRT)
 *   fpe       integer division by zero in divide_here (SIGFPE)
 *   ill       an undefined instruction in trap_here (SIGILL)
 *   wait      print "waiting" and block in read() (for a kill from outside)
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "hook.h"  /* run_hook(); stdio, stdlib, string, sys/wait, unistd */
#include <unistd.h>

static volatile int zero;
static volatile int value;

__attribute__((noinline)) static void check_invariant(int x)
{
    assert(x > 0);
    value = x;
}

__attribute__((noinline)) static void check_other(int x)
{
    assert(x > 1);
    value = x;
}

__attribute__((noinline)) static int divide_here(int dividend)
{
    return dividend / zero;
}

__attribute__((noinline)) static void trap_here(void)
{
    __builtin_trap();
}

int main(int argc, char **argv)
{
    char buf[1];

    if (argc != 4) {
        fprintf(stderr, "usage: bugs HOOK_COMMAND NAME MODE\n");
        return 2;
    }
    run_hook(argv[1], argv[2]);
    if (read(0, buf, 1) < 0)
        return 2;
    if (strcmp(argv[3], "assert_a") == 0)
        check_invariant(zero);
    else if (strcmp(argv[3], "assert_b") == 0)
        check_other(zero);
    else if (strcmp(argv[3], "fpe") == 0)
        return divide_here(1);
    else if (strcmp(argv[3], "ill") == 0)
        trap_here();
    else if (strcmp(argv[3], "wait") == 0) {
        printf("waiting\n");
        fflush(stdout);
        while (read(0, buf, 1) > 0)
            ;
        return 0;
    }
    return 2;
}
