/* tests/c/hook.h: what a hooked target does first, as Postfix's debug_process()
 * does: runs "HOOK_COMMAND NAME PID" through system() (not when HOOK_COMMAND is
 * "-"), prints "hook=RC" and returns RC (-1: the hook did not exit). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int run_hook(const char *hook_command, const char *name)
{
    char command[8192];
    int status = 0;

    if (strcmp(hook_command, "-") != 0) {
        snprintf(command, sizeof(command), "%s %s %ld", hook_command, name, (long) getpid());
        status = system(command);
        status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    printf("hook=%d\n", status);
    fflush(stdout);
    return status;
}
