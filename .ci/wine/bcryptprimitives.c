/* Wine-only: Wine 8 ships no bcryptprimitives.dll, whose ProcessPrng is how
 * Rust's standard library (inside cryptography's extension) asks Windows for
 * random bytes. This stand-in answers it from RtlGenRandom (advapi32's
 * SystemFunction036), which Wine does have. Real Windows never loads it:
 * .ci/windows copies it into the Wine prefix only. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x40000000 ? 0x40000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
