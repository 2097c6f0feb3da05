/* A target under a seccomp filter (tests/test_odd_targets.py).
 * usage: seccomp_target HOOK_COMMAND NAME MODE
 * Installs a SECCOMP_MODE_FILTER filter (after PR_SET_NO_NEW_PRIVS) that
 * allows every system call but getpriority(2), which fails with EPERM; prints
 * "blocked=ERRNO" (what getpriority then gives), runs the hook through system()
 * as Postfix does (the filter is inherited), prints "hook=RC", waits for one
 * byte on stdin, then MODE: "segv" dereferences NULL, "exit" exits 0.
 */
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile int *null_pointer;

int main(int argc, char **argv)
{
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getpriority, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog program = {sizeof(filter) / sizeof(filter[0]), filter};
    char command[8192];
    char c;
    int status;

    if (argc != 4)
        return 2;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program))
        return 3;
    errno = 0;
    getpriority(PRIO_PROCESS, 0);
    printf("blocked=%d\n", errno);
    fflush(stdout);
    snprintf(command, sizeof(command), "%s %s %ld", argv[1], argv[2], (long) getpid());
    status = system(command);
    printf("hook=%d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    fflush(stdout);
    if (read(0, &c, 1) != 1)
        return 2;
    if (strcmp(argv[3], "segv") == 0)
        return *null_pointer;
    return 0;
}
