/* fuzz_frame: libFuzzer target for the frame parser (`make fuzz`). The
 * input is a byte stream as a client would send it; eg_wire_fuzz_stream
 * parses it the way engramd does. test_wire replays tests/fuzz/corpus. */
#include "net.h"
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    (void)eg_wire_fuzz_stream(data, size);
    return 0;
}
