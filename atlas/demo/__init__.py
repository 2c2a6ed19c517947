"""``atlas demo``: the whole shop running against emulators, with a crowd of simulated users.

One concern per module:

* ``options``   the command line's choices (users, days, speed, seed...) and their defaults;
* ``clocks``    business time for the demo (sped up) and the scripted waits in business time;
* ``world``     the outside world: embedded PostgreSQL's directory, the Bot API and Crypto Pay
                emulators, the settings ``atlas run`` would read;
* ``vpn_node``  the VPN node: a real V2Ray core driven by the node agent, or the node emulator;
* ``chat``      one simulated Telegram user: send, press the buttons the bot sent, wait for replies;
* ``crowd``     the user scripts (one seeded random script per user) and the admin's script;
* ``faults``    the fault schedule (a pure table) and the code that injects each fault;
* ``view``      the terminal: a rich live view on a TTY, plain log lines otherwise;
* ``summary``   the final counts, the invariant check and the exit code;
* ``runner``    puts it together around the tree ``atlas run`` builds (``serve_tree``).
"""
