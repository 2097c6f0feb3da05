#define _GNU_SOURCE
/* Memory faults for the fault analysis and the human report.
 * usage: faults HOOK_COMMAND NAME MODE
 * Runs the hook through system() as Postfix's debug_process() does, prints
 * "hook=RC", waits for one byte on stdin, then does MODE:
 *   null44    reads through a NULL struct pointer at offset 0x44
 *   rodata    writes to a string literal (a read-only mapping of the program)
 *   badfp     calls through a function pointer to an unmapped address
 *   threads   starts 3 threads named worker-1..3; worker-2 does null44
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

struct record {
    char head[0x44];
    int field;
};

static struct record *volatile nowhere;
static char *volatile literal;
static void (*volatile jump)(void);
static volatile int sink;
static pthread_barrier_t started;

__attribute__((noinline)) static void read_null_field(void)
{
    sink = nowhere->field;
}

__attribute__((noinline)) static void write_literal(void)
{
    literal = (char *) "a string literal";
    literal[0] = 'X';
}

__attribute__((noinline)) static void call_bad_pointer(void)
{
    jump = (void (*)(void)) 0x1230000UL;
    jump();
}

static void *worker(void *arg)
{
    long number = (long) arg;
    char name[16];

    snprintf(name, sizeof(name), "worker-%ld", number);
    pthread_setname_np(pthread_self(), name);
    pthread_barrier_wait(&started);
    if (number == 2)
        read_null_field();
    for (;;)
        pause();
    return NULL;
}

int main(int argc, char **argv)
{
    char command[8192];
    char buf[1];
    int status = 0;

    if (argc != 4) {
        fprintf(stderr, "usage: faults HOOK_COMMAND NAME MODE\n");
        return 2;
    }
    if (strcmp(argv[1], "-") != 0) {
        snprintf(command, sizeof(command), "%s %s %ld", argv[1], argv[2], (long) getpid());
        status = system(command);
        status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    if (strcmp(argv[3], "threads") == 0) {
        pthread_t threads[3];
        pthread_barrier_init(&started, NULL, 4);
        for (long i = 0; i < 3; i++)
            pthread_create(&threads[i], NULL, worker, (void *) (i + 1));
        /* the threads exist (and wait on the barrier) before the hook attaches */
        printf("hook=%d\n", status);
        fflush(stdout);
        if (read(0, buf, 1) < 0)
            return 2;
        pthread_barrier_wait(&started);
        pthread_join(threads[1], NULL);
        return 2;
    }
    printf("hook=%d\n", status);
    fflush(stdout);
    if (read(0, buf, 1) < 0)
        return 2;
    if (strcmp(argv[3], "null44") == 0)
        read_null_field();
    else if (strcmp(argv[3], "rodata") == 0)
        write_literal();
    else if (strcmp(argv[3], "badfp") == 0)
        call_bad_pointer();
    return 2;
}
