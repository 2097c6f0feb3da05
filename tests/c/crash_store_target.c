/* A small linked program for tests/test_crash.py: its build-id is read back
 * and compared with readelf's, and ldd shows which libc it runs with. */
#include <stdio.h>

int main(int argc, char **argv)
{
    (void) argv;
    printf("argc=%d\n", argc);
    return 0;
}
