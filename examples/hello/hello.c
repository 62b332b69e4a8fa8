/*
 * hello: the smallest stockade example workload (a WASI command).
 *
 * Prints "Hello, <name>!" where <name> is the first argument or "world",
 * then the number of arguments (not counting the program name) and, when the
 * environment variable GREETING is set, its value. Exits 0, or 1 if stdout
 * cannot be written.
 *
 * Build: examples/build.sh (clang --target=wasm32-wasi, Debian wasi-libc).
 */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "world";
    const char *greeting = getenv("GREETING");

    printf("Hello, %s!\n", name);
    printf("arguments: %d\n", argc > 0 ? argc - 1 : 0);
    if (greeting != NULL) {
        printf("GREETING: %s\n", greeting);
    }
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fputs("hello: cannot write to stdout\n", stderr);
        return 1;
    }
    return 0;
}
