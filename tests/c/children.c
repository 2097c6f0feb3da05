/* Children of a traced process, for strace/ltrace -f.
 * usage: children HOOK_COMMAND NAME MODE
 * Runs the hook through system(), prints "hook=RC", waits for one byte on
 * stdin, then:
 *   exit:   forks a child that exits 5; waits for it and prints "child=STATUS"
 *           (the raw wait status); then waits for another byte and exits 4.
 *   segv:   the same, but the child dereferences NULL; the parent exits 4.
 *   orphan: forks a child that prints "child=PID" and blocks reading stdin;
 *           the parent exits 0 at once, leaving the child running.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile int *null_pointer;

int main(int argc, char **argv)
{
    char command[8192];
    char c;
    int status;
    pid_t child;

    if (argc != 4)
        return 2;
    snprintf(command, sizeof(command), "%s %s %ld", argv[1], argv[2], (long) getpid());
    status = system(command);
    printf("hook=%d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    fflush(stdout);
    if (read(0, &c, 1) != 1)
        return 2;
    child = fork();
    if (child < 0)
        return 3;
    if (child == 0) {
        if (strcmp(argv[3], "segv") == 0)
            return *null_pointer;
        if (strcmp(argv[3], "orphan") == 0) {
            printf("child=%ld\n", (long) getpid());
            fflush(stdout);
            while (read(0, &c, 1) > 0)
                ;
        }
        _exit(5);
    }
    if (strcmp(argv[3], "orphan") == 0)
        return 0;
    waitpid(child, &status, 0);
    printf("child=%d\n", status);
    fflush(stdout);
    if (read(0, &c, 1) != 1)
        return 2;
    return 4;
}
