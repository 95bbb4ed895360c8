/* Minimal Cortex-M startup for QEMU's MPS2 boards: vector table, .data/.bss setup, FPU on, main. */
#include <stdint.h>
#include <string.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
extern int main(void);
extern void eo_exit(int32_t code);

void eo_reset(void);
void eo_fault(void);

void eo_fault(void) { eo_exit(1); }

void eo_reset(void)
{
    memcpy(&_sdata, &_sidata, (size_t)((uint8_t *)&_edata - (uint8_t *)&_sdata));
    memset(&_sbss, 0, (size_t)((uint8_t *)&_ebss - (uint8_t *)&_sbss));
    *(volatile uint32_t *)0xE000ED88u |= (0xFu << 20); /* CPACR: full access to CP10/CP11 (FPU) */
    __asm__ volatile("dsb\n isb");
    eo_exit(main());
}

__attribute__((section(".vectors"), used)) static const void *const eo_vectors[16] = {
    &_estack, (const void *)eo_reset, (const void *)eo_fault, (const void *)eo_fault,
    (const void *)eo_fault, (const void *)eo_fault, (const void *)eo_fault, 0, 0, 0, 0,
    (const void *)eo_fault, (const void *)eo_fault, 0, (const void *)eo_fault, (const void *)eo_fault,
};
