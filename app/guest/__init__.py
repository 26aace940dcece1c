"""One guest: qemu's argv and process, its serial console and agent, the commands run in it."""
