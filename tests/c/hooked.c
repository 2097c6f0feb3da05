/* A stand-in for a Postfix daemon started with -D: it runs the
 * debugger_command through system(), exactly as Postfix's debug_process()
 * does, then does the work the tracer should see.
 *
 * usage: hooked HOOK_COMMAND NAME EXIT_CODE
 *   prints "hook=RC" (the command's exit status) as soon as system() returns,
 *   writes the marker "MARKER-after-hook" with write(2), then waits for one
 *   byte on stdin before exiting with EXIT_CODE.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    char command[8192];
    char buf[1];
    int status;

    if (argc != 4) {
        fprintf(stderr, "usage: hooked HOOK_COMMAND NAME EXIT_CODE\n");
        return 2;
    }
    snprintf(command, sizeof(command), "%s %s %ld", argv[1], argv[2], (long) getpid());
    status = system(command);
    printf("hook=%d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    fflush(stdout);
    if (write(1, "MARKER-after-hook\n", 18) != 18)
        return 2;
    if (read(0, buf, 1) < 0)
        return 2;
    return atoi(argv[3]);
}
