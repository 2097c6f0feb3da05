/* Execs a program once told to (tests/test_odd_targets.py: a setuid exec after attach).
 * usage: exec_later PROGRAM [ARG...]
 * Prints "ready", waits for one byte on stdin, then execs PROGRAM (same pid).
 */
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    char c;

    if (argc < 2)
        return 2;
    printf("ready\n");
    fflush(stdout);
    if (read(0, &c, 1) != 1)
        return 2;
    execv(argv[1], argv + 1);
    perror("execv");
    return 127;
}
