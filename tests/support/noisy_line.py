"""A serial line with noise, for the integration tests: two pseudo-terminals
(BUS for sluice, DEVICE for the pymodbus slaves, as symlinks) and this
process between them, forwarding every byte both ways — except that it
damages the CRC of answers from some units, as a noisy RS-485 line would.

    noisy_line.py BUS DEVICE [--garble UNIT]... [--flaky UNIT]...

--garble: every answer of UNIT is damaged; --flaky: every second one (the
first, third, ...). An answer is what the device side sends until 3 ms of
silence (at 19200 baud a frame has no gap longer than 1.5 characters, 0.8
ms). Prints "ready" once both ends exist.
"""

import argparse
import os
import select
import sys
import time
import tty


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("bus")
    parser.add_argument("device")
    parser.add_argument("--garble", type=int, action="append", default=[])
    parser.add_argument("--flaky", type=int, action="append", default=[])
    args = parser.parse_args()

    ends = {}
    for name in ("bus", "device"):
        master, slave = os.openpty()
        tty.setraw(slave)
        path = getattr(args, name)
        if os.path.lexists(path):
            os.unlink(path)
        os.symlink(os.ttyname(slave), path)
        # The slave stays open here too: the master then never reads EOF
        # or EIO while the other process reopens its end.
        ends[name] = (master, slave)
    bus, device = ends["bus"][0], ends["device"][0]
    answers = {}
    print("ready", flush=True)

    pending = bytearray()
    last_byte = 0.0
    while True:
        timeout = 0.003 if pending else None
        readable, _, _ = select.select([bus, device], [], [], timeout)
        if bus in readable:
            os.write(device, os.read(bus, 4096))
        if device in readable:
            pending += os.read(device, 4096)
            last_byte = time.monotonic()
        if pending and time.monotonic() - last_byte >= 0.003:
            answer = bytes(pending)
            pending.clear()
            unit = answer[0]
            answers[unit] = answers.get(unit, 0) + 1
            if unit in args.garble or (unit in args.flaky and answers[unit] % 2 == 1):
                damaged = bytearray(answer)
                damaged[-1] ^= 0xFF
                answer = bytes(damaged)
            os.write(bus, answer)


if __name__ == "__main__":
    sys.exit(main())
