# SPDX-License-Identifier: Apache-2.0
"""The parts of bench/ipc.py, one concern a module; the script itself conducts them.

- `constants`: the secret every process serves or asks for, the worker's names, the paths;
- `servers`: the (ipc), (http) and bare servers, each a process of its own;
- `clients`: the client processes, each timing its calls in a loop;
- `measure`: the conductor's side: start a server and N clients, gather what they measured;
- `sdk`: the greengrasssdk mode: a real core, real workers, the unmodified SDK;
- `breakdown`: where a read's microseconds go, layer by layer, in a worker-like process;
- `report`: the table and the verdict on each target.
"""
