/* edgeopt test harness: runs the model on every sample of an input file and writes the outputs.
 * Host: `./run input.bin output.bin`. Cortex-M under QEMU: the same files through semihosting,
 * and the executed instruction count of the first inference (QEMU -icount, shift 0: one
 * nanosecond of virtual time per instruction, read from the board's 32-bit timer). */
#include "model.h"

#include <stdint.h>

#ifdef EO_SEMIHOSTING
static int32_t eo_semihost(int32_t op, void *arg)
{
    register int32_t r0 __asm__("r0") = op;
    register void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static int32_t eo_strlen(const char *s) { int32_t n = 0; while (s[n]) ++n; return n; }

static int32_t eo_open(const char *name, int32_t mode)
{
    int32_t args[3];
    args[0] = (int32_t)(uintptr_t)name; args[1] = mode; args[2] = eo_strlen(name);
    return eo_semihost(0x01, args);
}

static int32_t eo_read(int32_t fd, void *buf, int32_t len)
{
    int32_t args[3];
    args[0] = fd; args[1] = (int32_t)(uintptr_t)buf; args[2] = len;
    return len - eo_semihost(0x06, args);
}

static void eo_write(int32_t fd, const void *buf, int32_t len)
{
    int32_t args[3];
    args[0] = fd; args[1] = (int32_t)(uintptr_t)buf; args[2] = len;
    (void)eo_semihost(0x05, args);
}

static void eo_puts(const char *s) { (void)eo_semihost(0x04, (void *)s); }

void eo_exit(int32_t code)
{
    /* ADP_Stopped_ApplicationExit (0x20026) ends QEMU with status 0, anything else with 1 */
    (void)eo_semihost(0x18, (void *)(uintptr_t)(code == 0 ? 0x20026 : 0x20023));
    for (;;) {}
}

#define EO_TIMER ((volatile uint32_t *)0x40000000u) /* CMSDK APB timer 0 on MPS2 boards */

static void eo_utoa(uint32_t v, char *out)
{
    char tmp[12];
    int32_t n = 0, i;
    do { tmp[n++] = (char)('0' + v % 10u); v /= 10u; } while (v);
    for (i = 0; i < n; ++i) out[i] = tmp[n - 1 - i];
    out[n] = 0;
}

int main(void)
{
    static eo_act_t input[MODEL_INPUT_SIZE];
    static eo_act_t output[MODEL_OUTPUT_SIZE];
    char line[48] = "timer_ticks=";
    int32_t in_fd = eo_open("input.bin", 1);
    int32_t out_fd = eo_open("output.bin", 5);
    int32_t first = 1;
    if (in_fd < 0 || out_fd < 0) { eo_puts("cannot open input.bin/output.bin\n"); eo_exit(1); }
    EO_TIMER[2] = 0xffffffffu;  /* RELOAD */
    EO_TIMER[1] = 0xffffffffu;  /* VALUE */
    EO_TIMER[0] = 1u;           /* CTRL: enable */
    while (eo_read(in_fd, input, MODEL_INPUT_SIZE) == MODEL_INPUT_SIZE) {
        uint32_t t0 = EO_TIMER[1], t1;
        model_run(input, output);
        t1 = EO_TIMER[1];
        if (first) {
            eo_utoa(t0 - t1, line + 12);
            eo_puts(line);
            eo_puts("\n");
            first = 0;
        }
        eo_write(out_fd, output, MODEL_OUTPUT_SIZE);
    }
    eo_exit(0);
    return 0;
}

#else
#include <stdio.h>

int main(int argc, char **argv)
{
    static eo_act_t input[MODEL_INPUT_SIZE];
    static eo_act_t output[MODEL_OUTPUT_SIZE];
    FILE *in, *out;
    if (argc != 3) { fprintf(stderr, "usage: %s input.bin output.bin\n", argv[0]); return 2; }
    in = fopen(argv[1], "rb");
    out = fopen(argv[2], "wb");
    if (!in || !out) { fprintf(stderr, "cannot open %s or %s\n", argv[1], argv[2]); return 2; }
    while (fread(input, 1, MODEL_INPUT_SIZE, in) == MODEL_INPUT_SIZE) {
        model_run(input, output);
        if (fwrite(output, 1, MODEL_OUTPUT_SIZE, out) != MODEL_OUTPUT_SIZE) { fprintf(stderr, "write failed\n"); return 1; }
    }
    fclose(in);
    return fclose(out) == 0 ? 0 : 1;
}
#endif
