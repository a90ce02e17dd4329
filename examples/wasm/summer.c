/* summer: reads "A + B" on stdin, writes the sum on stdout.
 *
 * A WASI command, the unit program of `sperse submit --wasm`: each input file is its
 * stdin, its stdout becomes the output file. Input it cannot read is an error on stderr
 * and exit code 2, which fails that unit alone (listed in OUTPUT/_failed.jsonl).
 *
 * Built by `make wasm-example` (zig from the ziglang package, target wasm32-wasi); the
 * built summer.wasm is committed beside this file.
 */
#include <stdio.h>

int main(void) {
    long long a, b;
    if (scanf("%lld + %lld", &a, &b) != 2) {
        fprintf(stderr, "summer: expected \"A + B\" on stdin\n");
        return 2;
    }
    printf("%lld\n", a + b);
    return 0;
}
