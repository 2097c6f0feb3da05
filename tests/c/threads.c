/* Thread crashes for the watch tracer.  usage: threads HOOK_COMMAND NAME MODE
 *   before: a thread is created BEFORE the hook runs; after the release byte
 *           it crashes in early_thread_crash().
 *   after:  after the release byte a NEW thread is created and crashes in
 *           late_thread_crash().
 * Prints "hook=RC" after the hook, then waits for one byte on stdin.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile int *null_pointer;
static int go[2];

__attribute__((noinline)) static void early_thread_crash(void)
{
    *null_pointer = 1;
}

__attribute__((noinline)) static void late_thread_crash(void)
{
    *null_pointer = 2;
}

static void *early_main(void *arg)
{
    char c;
    (void) arg;
    if (read(go[0], &c, 1) == 1)
        early_thread_crash();
    return NULL;
}

static void *late_main(void *arg)
{
    (void) arg;
    late_thread_crash();
    return NULL;
}

int main(int argc, char **argv)
{
    char command[8192];
    char c;
    int status;
    pthread_t early, late;

    if (argc != 4 || pipe(go) != 0)
        return 2;
    pthread_create(&early, NULL, early_main, NULL);
    snprintf(command, sizeof(command), "%s %s %ld", argv[1], argv[2], (long) getpid());
    status = system(command);
    printf("hook=%d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    fflush(stdout);
    if (read(0, &c, 1) != 1)
        return 2;
    if (strcmp(argv[3], "before") == 0) {
        if (write(go[1], "x", 1) != 1)
            return 2;
        pthread_join(early, NULL);
    } else {
        pthread_create(&late, NULL, late_main, NULL);
        pthread_join(late, NULL);
    }
    return 0;
}
