# SPDX-License-Identifier: Apache-2.0
"""The parts of bench/fleet.py, one concern a module; the script itself runs them.

- `constants`: the fleet's account, region, topic prefix, operator key and paths;
- `procfs`: what the run reads of its processes and the machine from /proc;
- `services`: Mosquitto, and moto's latency proxy in a process that counts the calls;
- `controlplane`: `edge cloud serve` (a replica) and its config;
- `cores`: the real cores (`edge run`), started in batches and sized to the memory;
- `counter`: a client on the broker that counts messages and notes final statuses;
- `world`: the run's services, control plane, cores and simulated cores, and their CPU;
- `rounds`: one deployment of every group, by CreateDeployment or StartBulkDeployment;
- `replicakill`: a replica SIGKILLed mid-bulk, and what its death broke;
- `report`: the table and the lines the run prints.
"""
