# openEuler's security hardening logs an idle shell out (TMOUT=300, readonly).
TMOUT=30
readonly TMOUT
export TMOUT
