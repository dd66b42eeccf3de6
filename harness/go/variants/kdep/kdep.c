/* libkdep.so: a C library the rig's needlib sink links against, standing in
 * for a system library that one node of a fleet lacks. */
int kdep_ready(void) { return 1; }
