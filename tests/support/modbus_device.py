"""Modbus devices for the integration tests: a pymodbus server (an
implementation sluice did not write) that sluice polls.

    modbus_device.py tcp PORT
    modbus_device.py rtu SERIAL_PATH BAUD

Units 1 to 5 answer. Any other unit: over TCP exception 11 (what a
gateway says of a device that did not answer), over RTU no answer at all.
Unit 3 (for the benchmark): holding registers 0..199 = 0..199.
Unit 1: holding registers 0..9 = 100, 200, ..., 1000, except register 0,
which counts up by one every 100 ms from 100; input registers 0..3 = the
float 21.5 (high word first) and the int32 -5 (high word first); coils 0..7
= 1, 0, 1, 1, 0, 0, 0, 1. Units 2, 4 and 5: holding registers 0..1 =
the uint32 70000 (high word first). Addresses past those blocks answer exception 2
(illegal data address). Prints "ready" once it serves.
"""

import asyncio
import struct
import sys

from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import StartAsyncSerialServer, StartAsyncTcpServer


def words(fmt, value):
    raw = struct.pack(">" + fmt, value)
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


# pymodbus adds 1 to a request's address: a block at 1 serves wire address 0.
def unit1():
    return ModbusDeviceContext(
        hr=ModbusSequentialDataBlock(1, [100 * (i + 1) for i in range(10)]),
        ir=ModbusSequentialDataBlock(1, words("f", 21.5) + words("i", -5)),
        co=ModbusSequentialDataBlock(1, [True, False, True, True, False, False, False, True]),
        di=ModbusSequentialDataBlock(1, [False] * 8),
    )


def unit3():
    return ModbusDeviceContext(
        hr=ModbusSequentialDataBlock(1, list(range(200))),
        ir=ModbusSequentialDataBlock(1, [0]),
        co=ModbusSequentialDataBlock(1, [False]),
        di=ModbusSequentialDataBlock(1, [False]),
    )


def unit2():
    return ModbusDeviceContext(
        hr=ModbusSequentialDataBlock(1, words("I", 70000)),
        ir=ModbusSequentialDataBlock(1, [0]),
        co=ModbusSequentialDataBlock(1, [False]),
        di=ModbusSequentialDataBlock(1, [False]),
    )


async def count(device):
    value = 100
    while True:
        await asyncio.sleep(0.1)
        value = (value + 1) % 65536
        device.setValues(3, 0, [value])


async def main():
    devices = {1: unit1(), 2: unit2(), 3: unit3(), 4: unit2(), 5: unit2()}
    context = ModbusServerContext(devices=devices, single=False)
    asyncio.get_running_loop().create_task(count(devices[1]))
    print("ready", flush=True)
    if sys.argv[1] == "tcp":
        await StartAsyncTcpServer(context=context, address=("127.0.0.1", int(sys.argv[2])))
    else:
        # A serial slave never answers for another unit: missing units are
        # silent (over TCP, pymodbus answers as a gateway: exception 11).
        await StartAsyncSerialServer(
            context=context,
            port=sys.argv[2],
            baudrate=int(sys.argv[3]),
            framer="rtu",
            ignore_missing_devices=True,
        )


asyncio.run(main())
