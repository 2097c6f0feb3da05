/* A crash with a secret on its stack, for tests/test_group_secrets.py.
 * usage: secret_crash HOOK_COMMAND NAME
 * Runs the hook through system() as Postfix's debug_process() does, prints
 * "hook=RC", waits for one byte on stdin, then check_password() dereferences
 * NULL: the password is in its caller's local array and in its own argument,
 * both of which gdb's bt full prints.
 */
#include "hook.h"  /* run_hook(); stdio, stdlib, string, sys/wait, unistd */

static volatile int *null_pointer;

__attribute__((noinline)) static int check_password(const char *given)
{
    return *null_pointer + given[0];
}

int main(int argc, char **argv)
{
    char password[] = "hunter2-canary-7f3a";
    char buf[1];

    if (argc != 3) {
        fprintf(stderr, "usage: secret_crash HOOK_COMMAND NAME\n");
        return 2;
    }
    run_hook(argv[1], argv[2]);
    if (read(0, buf, 1) < 0)
        return 2;
    return check_password(password);
}
