
# openEuler's prompt.
PS1='[\u@\h \W]\$ '
