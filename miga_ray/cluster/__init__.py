"""Ray: worker actors that own a device and one job at a time, the batch driver, reflection
candidate fan-out and Ray Job submission (DESIGN.md "Distributed shape").

Modules: ``worker`` (the actor), ``fanout`` (candidates on peers), ``batch`` (the driver),
``prompts`` (prompt files), ``report`` (manifest, summary, run status), ``runtime`` (connecting,
starting workers), ``run`` (``miga batch`` end to end), ``submit`` (``miga submit``).
"""
