"""The simulated Dext practice: its contract (dext-api.md), the practice that changes over
simulated time, drift switches, and its control surface under `/_sandbox/`."""
