/* Never finishes: must be stopped by fuel or timeout. */
int main(void) {
    volatile unsigned long long n = 0;
    for (;;) n++;
}
