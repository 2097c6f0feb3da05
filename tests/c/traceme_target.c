/* A child traced by its own parent through PTRACE_TRACEME (tests/test_odd_targets.py).
 * usage: traceme_target
 * The child asks to be traced, stops itself, and once its parent let it go on
 * waits for one byte on stdin and exits 0.  The parent, its tracer, prints
 * "child=PID" after the first stop, passes every later signal on, and exits
 * with the child's exit code (or 128+signal).
 */
#include <signal.h>
#include <stdio.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void)
{
    pid_t child = fork();
    int status;
    char c;

    if (child < 0)
        return 2;
    if (child == 0) {
        if (ptrace(PTRACE_TRACEME, 0, NULL, NULL) != 0)
            _exit(3);
        raise(SIGSTOP);
        _exit(read(0, &c, 1) == 1 ? 0 : 4);
    }
    if (waitpid(child, &status, 0) != child || !WIFSTOPPED(status))
        return 5;
    printf("child=%d\n", (int) child);
    fflush(stdout);
    ptrace(PTRACE_CONT, child, NULL, NULL);
    for (;;) {
        if (waitpid(child, &status, 0) != child)
            return 6;
        if (WIFEXITED(status))
            return WEXITSTATUS(status);
        if (WIFSIGNALED(status))
            return 128 + WTERMSIG(status);
        ptrace(PTRACE_CONT, child, NULL, (void *) (long) WSTOPSIG(status));
    }
}
