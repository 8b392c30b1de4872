/*
 * SafeTwin e-stop box: reference firmware for an ATmega328P (Arduino Uno / Nano, 16 MHz).
 *
 * Hardware
 *   - E-stop button, normally-closed contact, between PD2 (Arduino D2) and GND. The internal
 *     pull-up holds the pin high when the contact opens, so "pressed" and "wire broken" read
 *     the same: ENGAGED (fail-safe).
 *   - Optional status LED on PB5 (Arduino D13): on while engaged.
 *   - USB serial via the board's USB-UART bridge on USART0, 115200 8N1 (U2X, UBRR 16).
 *
 * Line protocol (version 1; see robot_io/estop.py and README.md)
 *   <payload>*<CK>\n, CK = two upper-case hex digits, XOR of the payload bytes.
 *   "SAFETWIN-ESTOP 1"  at boot and every 20 heartbeats
 *   "HB <seq> <R|E>"    every 50 ms (20 Hz); seq 0..65535 wraps; R released, E engaged
 *   "ESTOP"             on the debounced press edge, at once
 *   "RELEASE"           on the debounced release edge
 *
 * Debounce: the pin is sampled every 1 ms (Timer0 compare interrupt). Engaging needs
 * ENGAGE_MS consecutive high samples, releasing needs RELEASE_MS consecutive low samples,
 * so a press is reported quickly and a bouncing release is not.
 *
 * The watchdog (60 ms) resets the board if the main loop hangs; the host then sees the
 * heartbeat stop (stale) and, after the reboot, a new hello.
 *
 * This board only reports; the hardware e-stop chain (safety relay cutting servo power) is
 * separate and must not depend on this firmware or on the PC.
 */

#include <avr/interrupt.h>
#include <avr/io.h>
#include <avr/wdt.h>
#include <stdint.h>

#define PROTOCOL_VERSION "1"
#define HEARTBEAT_MS 50u
#define HELLO_EVERY 20u
#define ENGAGE_MS 5u
#define RELEASE_MS 50u
#define UBRR_115200_U2X 16u /* F_CPU 16 MHz, double speed: 117647 baud actual, +2.1 % error (within the UART's tolerance) */

static volatile uint16_t g_ms_ticks;      /* ms since boot, wraps */
static volatile uint8_t g_engaged = 1;   /* debounced level; start engaged until proven closed */
static volatile uint8_t g_edge;          /* set by the ISR on a debounced change */
static volatile uint8_t g_run_count;     /* consecutive samples disagreeing with g_engaged */

static void uart_init(void) {
    UBRR0H = (uint8_t)(UBRR_115200_U2X >> 8);
    UBRR0L = (uint8_t)UBRR_115200_U2X;
    UCSR0A = (uint8_t)_BV(U2X0);
    UCSR0B = (uint8_t)_BV(TXEN0);
    UCSR0C = (uint8_t)(_BV(UCSZ01) | _BV(UCSZ00)); /* 8N1 */
}

static void uart_put(char c) {
    while (!(UCSR0A & _BV(UDRE0))) {
    }
    UDR0 = (uint8_t)c;
}

/* Send "<payload>*<CK>\n". */
static void send_line(const char *payload) {
    static const char hex[] = "0123456789ABCDEF";
    uint8_t ck = 0;
    for (const char *p = payload; *p != '\0'; ++p) {
        ck ^= (uint8_t)*p;
        uart_put(*p);
    }
    uart_put('*');
    uart_put(hex[ck >> 4]);
    uart_put(hex[ck & 0x0Fu]);
    uart_put('\n');
}

/* Write the decimal form of v into buf (at least 6 bytes); returns a pointer past the digits. */
static char *put_u16(char *buf, uint16_t v) {
    char tmp[5];
    uint8_t n = 0;
    do {
        tmp[n++] = (char)('0' + (v % 10u));
        v /= 10u;
    } while (v != 0u);
    while (n > 0u) {
        *buf++ = tmp[--n];
    }
    return buf;
}

static void send_heartbeat(uint16_t seq, uint8_t engaged) {
    char line[16];
    char *p = line;
    *p++ = 'H';
    *p++ = 'B';
    *p++ = ' ';
    p = put_u16(p, seq);
    *p++ = ' ';
    *p++ = engaged ? 'E' : 'R';
    *p = '\0';
    send_line(line);
}

static void timer0_init(void) {
    TCCR0A = (uint8_t)_BV(WGM01);             /* CTC */
    TCCR0B = (uint8_t)(_BV(CS01) | _BV(CS00)); /* clk/64 -> 250 kHz */
    OCR0A = 249u;                              /* 250 counts = 1 ms */
    TIMSK0 = (uint8_t)_BV(OCIE0A);
}

/* 1 kHz: sample the button and debounce asymmetrically. */
ISR(TIMER0_COMPA_vect) {
    uint8_t raw_engaged = (PIND & _BV(PD2)) ? 1u : 0u; /* high = contact open = engaged */
    ++g_ms_ticks;
    if (raw_engaged == g_engaged) {
        g_run_count = 0u;
        return;
    }
    if (g_run_count < 255u) {
        ++g_run_count;
    }
    if (g_run_count >= (raw_engaged ? ENGAGE_MS : RELEASE_MS)) {
        g_engaged = raw_engaged;
        g_edge = 1u;
        g_run_count = 0u;
    }
}

static uint16_t millis(void) {
    uint16_t t;
    cli();
    t = g_ms_ticks;
    sei();
    return t;
}

int main(void) {
    uint16_t seq = 0u;
    uint16_t last_hb;
    uint8_t since_hello = 0u;

    MCUSR = 0u;
    wdt_enable(WDTO_60MS);
    DDRD &= (uint8_t)~_BV(DDD2);
    PORTD |= (uint8_t)_BV(PORTD2); /* pull-up: open contact reads high (engaged) */
    DDRB |= (uint8_t)_BV(DDB5);
    uart_init();
    timer0_init();
    sei();
    send_line("SAFETWIN-ESTOP " PROTOCOL_VERSION);
    last_hb = millis();

    for (;;) {
        uint8_t engaged;
        uint8_t edge;
        wdt_reset();
        cli();
        engaged = g_engaged;
        edge = g_edge;
        g_edge = 0u;
        sei();
        if (engaged) {
            PORTB |= (uint8_t)_BV(PORTB5);
        } else {
            PORTB &= (uint8_t)~_BV(PORTB5);
        }
        if (edge) {
            send_line(engaged ? "ESTOP" : "RELEASE");
        }
        if ((uint16_t)(millis() - last_hb) >= HEARTBEAT_MS) {
            last_hb = (uint16_t)(last_hb + HEARTBEAT_MS);
            if (++since_hello >= HELLO_EVERY) {
                since_hello = 0u;
                send_line("SAFETWIN-ESTOP " PROTOCOL_VERSION);
            }
            send_heartbeat(seq, engaged);
            ++seq;
        }
    }
}
