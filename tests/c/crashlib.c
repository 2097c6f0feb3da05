/* A shared library of the tests' own (built with -shared -fPIC, then stripped):
 * lib_outer < lib_inner, which hands zlib's crc32() a bad pointer, so the
 * process dies of SIGSEGV inside libz.so.1 (a Debian package's library),
 * called from this one (no package's).  zlib is dlopen()ed: no headers needed.
 */
#include <dlfcn.h>
#include <stddef.h>

typedef unsigned long (*crc32_fn)(unsigned long, const unsigned char *, unsigned int);

__attribute__((noinline)) int lib_inner(void)
{
    void *zlib = dlopen("libz.so.1", RTLD_NOW);
    crc32_fn crc;

    if (zlib == NULL)
        return -1;
    crc = (crc32_fn) dlsym(zlib, "crc32");
    if (crc == NULL)
        return -2;
    return (int) crc(0, (const unsigned char *) 16, 4096);
}

__attribute__((noinline)) int lib_outer(void)
{
    return lib_inner() + 1;
}
