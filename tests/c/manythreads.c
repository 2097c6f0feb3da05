/* 300 threads, one crashing: the watch tracer's core of a many-threaded process.
 * usage: manythreads HOOK_COMMAND NAME [COUNT]
 *   Starts COUNT (default 300) threads, each blocked in worker_wait()
 *   (pthread_cond_wait), touches a heap block, runs the hook through
 *   system() as Postfix's debug_process() does ("-" skips it: untraced),
 *   prints "hook=RC", waits for one byte on stdin, then one more thread
 *   crashes in crash_in_thread() < crasher_main.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "hook.h"  /* run_hook(); stdio, stdlib, string, sys/wait, unistd */
#include <unistd.h>

static volatile int *null_pointer;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t never = PTHREAD_COND_INITIALIZER;
static int started;

__attribute__((noinline)) static void worker_wait(int number)
{
    pthread_mutex_lock(&lock);
    started++;
    while (number >= 0)  /* never signalled */
        pthread_cond_wait(&never, &lock);
    pthread_mutex_unlock(&lock);
}

static void *worker_main(void *arg)
{
    worker_wait((int) (long) arg);
    return NULL;
}

__attribute__((noinline)) static void crash_in_thread(void)
{
    *null_pointer = 1;
}

static void *crasher_main(void *arg)
{
    (void) arg;
    crash_in_thread();
    return NULL;
}

int main(int argc, char **argv)
{
    char c;
    int count = argc > 3 ? atoi(argv[3]) : 300, done = 0;
    pthread_t thread;
    char *heap;

    if (argc < 3 || count < 1)
        return 2;
    heap = malloc(1 << 20);
    memset(heap, 'h', 1 << 20);
    for (int i = 0; i < count; i++)
        if (pthread_create(&thread, NULL, worker_main, (void *) (long) i) != 0)
            return 3;
    while (!done) {
        pthread_mutex_lock(&lock);
        done = started == count;
        pthread_mutex_unlock(&lock);
        usleep(1000);
    }
    run_hook(argv[1], argv[2]);
    if (read(0, &c, 1) != 1)
        return 2;
    pthread_create(&thread, NULL, crasher_main, NULL);
    pthread_join(thread, NULL);
    return heap[0] == 'h' ? 0 : 1;
}
