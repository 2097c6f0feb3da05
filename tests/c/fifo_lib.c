/* usage: fifo_lib HOOK_COMMAND NAME LIBRARY
 * A hostile target for the crash capture (issue 23): runs the hook through
 * system() as Postfix's debug_process() does, prints "hook=RC", waits for
 * one byte on stdin, dlopen()s LIBRARY (this same file built with
 * -DFIFO_LIB_SO -shared -fPIC) and calls fifo_lib_value() from it, replaces
 * the library file by a FIFO at the same path (unlink + mkfifo), prints
 * "fifo", and dereferences NULL: a gdb that opens LIBRARY by its path blocks.
 * With a 4th argument "early", the library is loaded and swapped before the
 * hook runs: a tracer's attach meets the FIFO; with "keep", it stays a
 * regular file (a FIFO its debuglink names beside it is the trap).
 */
#ifdef FIFO_LIB_SO
__attribute__((noinline)) int fifo_lib_value(void)
{
    return 42;
}
#else
#include <dlfcn.h>
#include <sys/stat.h>
#include "hook.h"  /* run_hook(); stdio, stdlib, string, sys/wait, unistd */

__attribute__((noinline)) static int fault(int value)
{
    volatile int *volatile null = NULL;
    return *null + value;
}

static int keep;  /* "keep": the library stays a regular file */

static int (*load_and_swap(const char *path))(void)
{
    void *lib = dlopen(path, RTLD_NOW);
    int (*value)(void);

    if (lib == NULL) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        exit(3);
    }
    value = (int (*)(void)) dlsym(lib, "fifo_lib_value");
    if (value == NULL || (!keep && (unlink(path) != 0 || mkfifo(path, 0600) != 0))) {
        perror("fifo_lib");
        exit(4);
    }
    return value;
}

int main(int argc, char **argv)
{
    char buf[1];
    int early = argc == 5 && argv[4][0] == 'e';
    int (*value)(void) = NULL;

    keep = argc == 5 && argv[4][0] == 'k';
    if (argc != 4 && !early && !keep) {
        fprintf(stderr, "usage: fifo_lib HOOK_COMMAND NAME LIBRARY [early|keep]\n");
        return 2;
    }
    if (early)
        value = load_and_swap(argv[3]);
    run_hook(argv[1], argv[2]);
    if (read(0, buf, 1) < 0)
        return 2;
    if (!early)
        value = load_and_swap(argv[3]);
    printf("fifo\n");
    fflush(stdout);
    return fault(value());
}
#endif
