/* libretracelib.so for tests/c/retrace_target.c: retrace_lib_crash() dereferences NULL.
 * Built twice with another VARIANT to stand for an upgraded library (another build-id). */
#ifndef VARIANT
#define VARIANT 1
#endif

static volatile int *lib_null;

__attribute__((noinline)) static int retrace_lib_inner(int value)
{
    return *lib_null + value + VARIANT;
}

int retrace_lib_crash(int value)
{
    return retrace_lib_inner(value) + 1;
}
