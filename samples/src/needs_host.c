/* Imports functions the sandbox does not provide: must be refused with
 * their names. */
__attribute__((import_module("env"), import_name("host_magic"))) int host_magic(void);
__attribute__((import_module("shoal"), import_name("secret"))) int secret(int);
int main(void) { return host_magic() + secret(1); }
