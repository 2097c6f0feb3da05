/* usage: crash_in_lib HOOK_COMMAND NAME
 * Runs the hook through system() as Postfix's debug_process() does, prints
 * "hook=RC", waits for one byte on stdin, then calls lib_outer() of
 * libcrashlib.so (tests/c/crashlib.c), which crashes inside zlib.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int lib_outer(void);

int main(int argc, char **argv)
{
    char command[8192];
    char buf[1];
    int status;

    if (argc != 3) {
        fprintf(stderr, "usage: crash_in_lib HOOK_COMMAND NAME\n");
        return 2;
    }
    snprintf(command, sizeof(command), "%s %s %ld", argv[1], argv[2], (long) getpid());
    status = system(command);
    printf("hook=%d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    fflush(stdout);
    if (read(0, buf, 1) < 0)
        return 2;
    return lib_outer() + 100;
}
