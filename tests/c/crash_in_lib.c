/* usage: crash_in_lib HOOK_COMMAND NAME
 * Runs the hook through system() as Postfix's debug_process() does, prints
 * "hook=RC", waits for one byte on stdin, then calls lib_outer() of
 * libcrashlib.so (tests/c/crashlib.c), which crashes inside zlib.
 */
#include "hook.h"  /* run_hook(); stdio, stdlib, string, sys/wait, unistd */

int lib_outer(void);

int main(int argc, char **argv)
{
    char buf[1];

    if (argc != 3) {
        fprintf(stderr, "usage: crash_in_lib HOOK_COMMAND NAME\n");
        return 2;
    }
    run_hook(argv[1], argv[2]);
    if (read(0, buf, 1) < 0)
        return 2;
    return lib_outer() + 100;
}
