/* fork+exec and exec for the watch tracer.
 * usage: forker HOOK_COMMAND NAME MODE CRASH_BINARY
 * Runs the hook, prints "hook=RC", waits for one byte on stdin, then:
 *   forkexec: forks; the child execs "CRASH_BINARY - NAME-child segv" (which
 *             waits for a byte on its own stdin, the same pipe); the parent
 *             waits for it, prints "child=STATUS" (the raw wait status) and
 *             exits 0;
 *   exec:     execs "CRASH_BINARY - NAME segv" itself (same pid).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    char command[8192];
    char c;
    int status;
    pid_t child;

    if (argc != 5)
        return 2;
    snprintf(command, sizeof(command), "%s %s %ld", argv[1], argv[2], (long) getpid());
    status = system(command);
    printf("hook=%d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    fflush(stdout);
    if (read(0, &c, 1) != 1)
        return 2;
    if (strcmp(argv[3], "exec") == 0) {
        execl(argv[4], argv[4], "-", argv[2], "segv", (char *) NULL);
        return 3;
    }
    child = fork();
    if (child == 0) {
        execl(argv[4], argv[4], "-", "child", "segv", (char *) NULL);
        _exit(3);
    }
    waitpid(child, &status, 0);
    printf("child=%d\n", status);
    fflush(stdout);
    return 0;
}
