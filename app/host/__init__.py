"""The host side: links and the ledger, firewall rules, the uplink, the lab lock, cleanup."""
