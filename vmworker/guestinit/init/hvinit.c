/*
 * hvinit: PID 1 of a HyperVM (the role hyperstart played for Hyper).
 *
 * Contract (the host side lives in vmworker/guestinit/):
 *   - configuration arrives as data on a virtio-blk disk whose serial is
 *     "hvm-config" (format: vmworker/guestinit/config.py); nothing from it is
 *     ever handed to a shell;
 *   - everything the guest reports goes, one line per record, to the
 *     virtio-serial port "io.hypervm.log" (the durable record: app output
 *     tagged "out"/"err", and the events init/started/stopping/killing/oom/
 *     error/exit); events are mirrored best-effort on "io.hypervm.control";
 *   - the host writes "stop\n" on "io.hypervm.control" to stop the app
 *     (SIGTERM, then SIGKILL after stop_grace_s), and "exec <id> <timeout_ms>
 *     <hex command>\n" to run a health-check command in the container (as the
 *     app's user, with its env and workdir), answered there with one
 *     "exec-result <id> ..." line;
 *   - the VM always powers itself off at the end; if this process ever dies the
 *     kernel panics and panic=-1 reboots, which the host maps to destroy.
 * The full protocol is documented in vmworker/guestinit/protocol.py.
 *
 * Built with: gcc -static -Os (see initramfs.py). With -DHVINIT_PARSE_ONLY the
 * file compiles to a host tool that only parses a config disk image, so the
 * parser can be fuzzed on the host.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>

/* ---- constants shared with the host side (vmworker/guestinit/) ---------- */

#define CONFIG_DISK_SERIAL "hvm-config"
#define LOG_PORT_NAME "io.hypervm.log"
#define CONTROL_PORT_NAME "io.hypervm.control"

#define CONFIG_MAGIC "HVMCONF\0"
#define CONFIG_MAGIC_LEN 8
#define CONFIG_VERSION 1u
#define CONFIG_HEADER_LEN 16 /* magic, u32 version, u32 payload length */
#define CONFIG_MAX_PAYLOAD (1024u * 1024u)
#define CONFIG_MAX_LIST 4096u

enum config_tag {
	TAG_HOSTNAME = 1,
	TAG_ARGV = 2,
	TAG_ENV = 3,
	TAG_WORKING_DIR = 4,
	TAG_USER = 5,
	TAG_ROOTFS_SERIAL = 6,
	TAG_ROOTFS_TYPE = 7,
	TAG_OVERLAY_SIZE_MIB = 8,
	TAG_STOP_GRACE_S = 9,
	TAG_NET_IP_CIDR = 10,
	TAG_NET_GATEWAY = 11,
	TAG_NET_MAC = 12,
	TAG_NET_NAMESERVER = 13,
	TAG_TENANT_NET_MAC = 14,
	TAG_TENANT_NET_IP_CIDR = 15,
	TAG_VOLUME = 16, /* "<serial> <containerPath>", repeatable */
	TAG_LAST = TAG_VOLUME,
};

/* Exit codes reported when the app never ran, chosen like docker run's. */
#define EXIT_INIT_FAILURE 125
#define EXIT_CANNOT_EXECUTE 126
#define EXIT_NOT_FOUND 127

struct config {
	char *hostname;
	char *working_dir;
	char *user;
	char *rootfs_serial;
	char *rootfs_type;
	unsigned long overlay_size_mib;
	unsigned long stop_grace_s;
	char **argv; /* NULL-terminated */
	size_t argc;
	char **env; /* NULL-terminated */
	size_t envc;
	char *net_ip_cidr;
	char *net_gateway;
	char *net_mac;
	char **nameservers;
	size_t nameserverc;
	char *tenant_net_mac; /* the tenant network NIC: found by MAC, no route */
	char *tenant_net_ip_cidr;
	char **volumes; /* "<serial> <name>": mounted at MESOS_SANDBOX/<name> */
	size_t volumec;
	int seen[TAG_LAST + 1];
};

/* ---- config parser: bounds-checked, never trusts a length --------------- */

#define VOLUME_SERIAL_MAX 20 /* VIRTIO_BLK_ID_BYTES */
#define MESOS_SANDBOX "/mnt/mesos/sandbox"

/* "<serial> <name>": a serial of [A-Za-z0-9._-]{1,20}, one space, a name that is one path
 * segment (no '/', not "." or ".."), at most 255 bytes. */
static int volume_record_valid(const char *value)
{
	const char *space = strchr(value, ' ');
	if (!space || space == value || space - value > VOLUME_SERIAL_MAX)
		return 0;
	for (const char *c = value; c < space; c++)
		if (!(isalnum((unsigned char)*c) || *c == '.' || *c == '_' || *c == '-'))
			return 0;
	const char *name = space + 1;
	size_t len = strlen(name);
	if (len == 0 || len > 255 || strchr(name, '/') || strcmp(name, ".") == 0 ||
	    strcmp(name, "..") == 0)
		return 0;
	return 1;
}

static uint32_t crc32_ieee(const unsigned char *data, size_t len)
{
	uint32_t crc = 0xffffffffu;
	for (size_t i = 0; i < len; i++) {
		crc ^= data[i];
		for (int bit = 0; bit < 8; bit++)
			crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
	}
	return ~crc;
}

static uint32_t read_le32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int parse_decimal(const char *text, unsigned long min, unsigned long max,
			 unsigned long *out)
{
	size_t len = strlen(text);
	unsigned long value = 0;
	if (len == 0 || len > 10)
		return -1;
	for (size_t i = 0; i < len; i++) {
		if (text[i] < '0' || text[i] > '9')
			return -1;
		value = value * 10 + (unsigned long)(text[i] - '0');
	}
	if (value < min || value > max)
		return -1;
	*out = value;
	return 0;
}

static int list_append(char ***list, size_t *count, char *value)
{
	if (*count >= CONFIG_MAX_LIST)
		return -1;
	char **grown = realloc(*list, (*count + 2) * sizeof(char *));
	if (!grown)
		return -1;
	grown[(*count)++] = value;
	grown[*count] = NULL;
	*list = grown;
	return 0;
}

/*
 * Parses a config disk image. Returns 0, or -1 with a one-line reason in err.
 * Layout: "HVMCONF\0", u32 version, u32 payload_len, payload, u32 crc32(payload);
 * payload = records of u16 tag, u32 len, len bytes (no NUL inside).
 */
static int config_parse(const unsigned char *buf, size_t len, struct config *cfg, char *err,
			size_t errlen)
{
	memset(cfg, 0, sizeof(*cfg));
	if (len < CONFIG_HEADER_LEN + 4) {
		snprintf(err, errlen, "config: disk too small (%zu bytes)", len);
		return -1;
	}
	if (memcmp(buf, CONFIG_MAGIC, CONFIG_MAGIC_LEN) != 0) {
		snprintf(err, errlen, "config: bad magic (not a HyperVM config disk)");
		return -1;
	}
	uint32_t version = read_le32(buf + 8);
	uint32_t payload_len = read_le32(buf + 12);
	if (version != CONFIG_VERSION) {
		snprintf(err, errlen, "config: unsupported version %u (init speaks %u)", version,
			 CONFIG_VERSION);
		return -1;
	}
	if (payload_len > CONFIG_MAX_PAYLOAD || payload_len > len - CONFIG_HEADER_LEN - 4) {
		snprintf(err, errlen, "config: truncated (payload of %u bytes does not fit)",
			 payload_len);
		return -1;
	}
	const unsigned char *payload = buf + CONFIG_HEADER_LEN;
	if (crc32_ieee(payload, payload_len) != read_le32(payload + payload_len)) {
		snprintf(err, errlen, "config: checksum mismatch (corrupt config disk)");
		return -1;
	}
	size_t pos = 0;
	while (pos < payload_len) {
		if (payload_len - pos < 6) {
			snprintf(err, errlen, "config: truncated record header at %zu", pos);
			return -1;
		}
		unsigned tag = (unsigned)payload[pos] | (unsigned)payload[pos + 1] << 8;
		uint32_t value_len = read_le32(payload + pos + 2);
		pos += 6;
		if (value_len > payload_len - pos) {
			snprintf(err, errlen, "config: record %u overruns the payload", tag);
			return -1;
		}
		const unsigned char *raw = payload + pos;
		pos += value_len;
		if (memchr(raw, '\0', value_len)) {
			snprintf(err, errlen, "config: record %u contains a NUL byte", tag);
			return -1;
		}
		char *value = malloc((size_t)value_len + 1);
		if (!value) {
			snprintf(err, errlen, "config: out of memory");
			return -1;
		}
		memcpy(value, raw, value_len);
		value[value_len] = '\0';
		if (tag < 1 || tag > TAG_LAST) {
			free(value);
			snprintf(err, errlen, "config: unknown record tag %u", tag);
			return -1;
		}
		int repeatable = tag == TAG_ARGV || tag == TAG_ENV || tag == TAG_NET_NAMESERVER ||
				 tag == TAG_VOLUME;
		if (!repeatable && cfg->seen[tag]) {
			free(value);
			snprintf(err, errlen, "config: record %u given twice", tag);
			return -1;
		}
		cfg->seen[tag] = 1;
		int rc = 0;
		switch (tag) {
		case TAG_HOSTNAME: cfg->hostname = value; break;
		case TAG_WORKING_DIR: cfg->working_dir = value; break;
		case TAG_USER: cfg->user = value; break;
		case TAG_ROOTFS_SERIAL: cfg->rootfs_serial = value; break;
		case TAG_ROOTFS_TYPE: cfg->rootfs_type = value; break;
		case TAG_NET_IP_CIDR: cfg->net_ip_cidr = value; break;
		case TAG_NET_GATEWAY: cfg->net_gateway = value; break;
		case TAG_NET_MAC: cfg->net_mac = value; break;
		case TAG_TENANT_NET_MAC: cfg->tenant_net_mac = value; break;
		case TAG_TENANT_NET_IP_CIDR: cfg->tenant_net_ip_cidr = value; break;
		case TAG_ARGV: rc = list_append(&cfg->argv, &cfg->argc, value); break;
		case TAG_ENV: rc = list_append(&cfg->env, &cfg->envc, value); break;
		case TAG_NET_NAMESERVER:
			rc = list_append(&cfg->nameservers, &cfg->nameserverc, value);
			break;
		case TAG_VOLUME:
			rc = volume_record_valid(value) ? list_append(&cfg->volumes, &cfg->volumec, value)
							: (free(value), -1);
			break;
		case TAG_OVERLAY_SIZE_MIB:
			rc = parse_decimal(value, 1, 1024ul * 1024ul, &cfg->overlay_size_mib);
			free(value);
			break;
		case TAG_STOP_GRACE_S:
			rc = parse_decimal(value, 0, 86400, &cfg->stop_grace_s);
			free(value);
			break;
		}
		if (rc != 0) {
			snprintf(err, errlen, "config: record %u has an invalid value", tag);
			return -1;
		}
	}
	const char *missing = NULL;
	if (cfg->argc == 0 || cfg->argv[0][0] == '\0')
		missing = "argv";
	else if (!cfg->rootfs_serial || !cfg->rootfs_serial[0])
		missing = "rootfs_serial";
	else if (!cfg->rootfs_type)
		missing = "rootfs_type";
	else if (!cfg->seen[TAG_OVERLAY_SIZE_MIB])
		missing = "overlay_size_mib";
	else if (!cfg->seen[TAG_STOP_GRACE_S])
		missing = "stop_grace_s";
	if (missing) {
		snprintf(err, errlen, "config: missing %s", missing);
		return -1;
	}
	if (strcmp(cfg->rootfs_type, "erofs") != 0 && strcmp(cfg->rootfs_type, "ext4") != 0) {
		snprintf(err, errlen, "config: unsupported rootfs_type");
		return -1;
	}
	if (cfg->hostname && strlen(cfg->hostname) > 64) {
		snprintf(err, errlen, "config: hostname longer than 64 bytes");
		return -1;
	}
	if (cfg->working_dir && cfg->working_dir[0] && cfg->working_dir[0] != '/') {
		snprintf(err, errlen, "config: working_dir must be absolute");
		return -1;
	}
	if ((cfg->net_gateway || cfg->net_mac || cfg->nameserverc) && !cfg->net_ip_cidr) {
		snprintf(err, errlen, "config: network given without ip_cidr");
		return -1;
	}
	if (!cfg->tenant_net_mac != !cfg->tenant_net_ip_cidr) {
		snprintf(err, errlen, "config: tenant network needs both mac and ip_cidr");
		return -1;
	}
	if (!cfg->env) {
		cfg->env = calloc(1, sizeof(char *));
		if (!cfg->env) {
			snprintf(err, errlen, "config: out of memory");
			return -1;
		}
	}
	return 0;
}

#ifdef HVINIT_PARSE_ONLY
/* Host tool: parse config images and print each canonically (for tests and fuzzing). */
static void print_field(const char *name, const char *value)
{
	if (value)
		printf("%s=%s\n", name, value);
}

static void parse_and_print(const char *path)
{
	printf("== %s\n", path);
	FILE *f = fopen(path, "rb");
	if (!f) {
		printf("error=cannot open\n");
		return;
	}
	size_t cap = CONFIG_HEADER_LEN + CONFIG_MAX_PAYLOAD + 4;
	unsigned char *buf = malloc(cap);
	size_t len = buf ? fread(buf, 1, cap, f) : 0;
	fclose(f);
	struct config cfg;
	char err[256];
	if (!buf || config_parse(buf, len, &cfg, err, sizeof(err)) != 0) {
		printf("error=%s\n", buf ? err : "oom");
		free(buf);
		return;
	}
	free(buf);
	print_field("hostname", cfg.hostname);
	for (size_t i = 0; i < cfg.argc; i++)
		print_field("argv", cfg.argv[i]);
	for (size_t i = 0; i < cfg.envc; i++)
		print_field("env", cfg.env[i]);
	print_field("working_dir", cfg.working_dir);
	print_field("user", cfg.user);
	print_field("rootfs_serial", cfg.rootfs_serial);
	print_field("rootfs_type", cfg.rootfs_type);
	printf("overlay_size_mib=%lu\nstop_grace_s=%lu\n", cfg.overlay_size_mib, cfg.stop_grace_s);
	print_field("net_ip_cidr", cfg.net_ip_cidr);
	print_field("net_gateway", cfg.net_gateway);
	print_field("net_mac", cfg.net_mac);
	for (size_t i = 0; i < cfg.nameserverc; i++)
		print_field("nameserver", cfg.nameservers[i]);
	print_field("tenant_net_mac", cfg.tenant_net_mac);
	print_field("tenant_net_ip_cidr", cfg.tenant_net_ip_cidr);
	for (size_t i = 0; i < cfg.volumec; i++)
		print_field("volume", cfg.volumes[i]);
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++)
		parse_and_print(argv[i]);
	return 0;
}
#else /* the init proper */

/* ---- reporting --------------------------------------------------------- */

static int console_fd = -1;
static int log_fd = -1;     /* io.hypervm.log: blocking writes, the durable record */
static int control_fd = -1; /* io.hypervm.control: O_NONBLOCK, stop in, events out */
static double init_started_ms;

static double monotonic_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

static int write_all(int fd, const char *data, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, data, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		data += n;
		len -= (size_t)n;
	}
	return 0;
}

static void console_write(const char *text)
{
	if (console_fd >= 0)
		write_all(console_fd, text, strlen(text));
}

#ifdef HVINIT_TRACE
/* -DHVINIT_TRACE: phase timestamps on the console, for boot measurements. */
#define TRACE(what)                                                                    \
	do {                                                                           \
		char trace_line[96];                                                   \
		snprintf(trace_line, sizeof(trace_line), "hvinit: %.3f %s\n", monotonic_ms(), \
			 what);                                                        \
		console_write(trace_line);                                             \
	} while (0)
#else
#define TRACE(what) do { } while (0)
#endif

/*
 * A write to a virtio port blocks while the host side is closed; the log port
 * is file-backed (always open), but a misconfigured host must never hang us:
 * wait at most 2 s for it, then fall back to the console.
 */
static void log_port_write(const char *data, size_t len)
{
	if (log_fd < 0)
		return;
	struct pollfd pfd = {.fd = log_fd, .events = POLLOUT};
	int ready;
	do {
		ready = poll(&pfd, 1, 2000);
	} while (ready < 0 && errno == EINTR);
	if (ready <= 0 || !(pfd.revents & POLLOUT) || write_all(log_fd, data, len) != 0) {
		close(log_fd);
		log_fd = -1;
		console_write("hvinit: log port unwritable, reporting on the console only\n");
	}
}

/* Replaces control characters so a record is always exactly one line. */
static void sanitize_line(char *text)
{
	for (unsigned char *p = (unsigned char *)text; *p; p++)
		if (*p < 0x20 || *p == 0x7f)
			*p = '?';
}

/* One record: formatted, made a single line, newline-terminated; returns its length. */
static size_t format_record(char *line, size_t cap, const char *fmt, va_list ap)
{
	vsnprintf(line, cap - 1, fmt, ap);
	sanitize_line(line);
	size_t len = strlen(line);
	line[len++] = '\n';
	line[len] = '\0';
	return len;
}

/*
 * Everything the guest says on the control port goes through this queue, whole lines only:
 * the port is non-blocking, and an interactive shell's output must wait (not be cut) while
 * the host reads slowly. A line that does not fit is dropped whole. The queue is emptied
 * when the host hangs up (nobody would read it) and sent out as the port takes it.
 */
#define CONTROL_QUEUE_MAX (512u * 1024u)
static char control_queue[CONTROL_QUEUE_MAX];
static size_t control_queue_head, control_queue_tail;

static size_t control_queue_room(void)
{
	return CONTROL_QUEUE_MAX - (control_queue_tail - control_queue_head);
}

static int control_queue_pending(void)
{
	return control_queue_tail > control_queue_head;
}

static void control_queue_clear(void)
{
	control_queue_head = control_queue_tail = 0;
}

static void control_flush(void)
{
	while (control_fd >= 0 && control_queue_pending()) {
		ssize_t n = write(control_fd, control_queue + control_queue_head,
				  control_queue_tail - control_queue_head);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return; /* EAGAIN: the host is slow or not connected; POLLOUT resumes */
		control_queue_head += (size_t)n;
	}
	if (!control_queue_pending())
		control_queue_clear();
}

static int control_send(const char *line, size_t len)
{
	if (control_fd < 0 || len > control_queue_room())
		return -1;
	if (control_queue_tail + len > CONTROL_QUEUE_MAX) {
		memmove(control_queue, control_queue + control_queue_head,
			control_queue_tail - control_queue_head);
		control_queue_tail -= control_queue_head;
		control_queue_head = 0;
	}
	memcpy(control_queue + control_queue_tail, line, len);
	control_queue_tail += len;
	control_flush();
	return 0;
}

static void send_event(const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	va_start(ap, fmt);
	size_t len = format_record(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (log_fd >= 0)
		log_port_write(line, len);
	else {
		console_write("hvinit: ");
		console_write(line);
	}
	control_send(line, len); /* best-effort: dropped when the host hangs up */
}

static void send_output(const char *tag, const char *data, size_t len)
{
	char record[4200];
	size_t tag_len = strlen(tag);
	memcpy(record, tag, tag_len);
	record[tag_len] = ' ';
	memcpy(record + tag_len + 1, data, len);
	record[tag_len + 1 + len] = '\n';
	if (log_fd >= 0)
		log_port_write(record, tag_len + len + 2);
	else if (console_fd >= 0)
		write_all(console_fd, record, tag_len + len + 2);
}

static unsigned long read_oom_kill_count(void)
{
	char buf[8192];
	int fd = open("/proc/vmstat", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	char *line = strstr(buf, "\noom_kill ");
	return line ? strtoul(line + 10, NULL, 10) : 0;
}

static unsigned long oom_kills_before;
static int oom_baseline_taken;

static void __attribute__((noreturn)) power_off(int exit_code)
{
	int oom = oom_baseline_taken && read_oom_kill_count() > oom_kills_before;
	/* Before the exit report: the host may end the VM once it has read it, and what the app
	 * wrote to its persistent volumes must be on them by then. */
	sync();
	send_event("oom %d", oom);
	send_event("exit %d", exit_code);
	/* The last port write is queued, not necessarily consumed: give the host a moment. */
	struct timespec settle = {.tv_sec = 0, .tv_nsec = 20 * 1000 * 1000};
	nanosleep(&settle, NULL);
	reboot(RB_POWER_OFF);
	/* Only reached if power-off failed: dying panics the kernel, panic=-1 reboots. */
	_exit(exit_code);
}

static void __attribute__((noreturn, format(printf, 2, 3))) die(int exit_code, const char *fmt, ...)
{
	char message[768];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);
	sanitize_line(message);
	console_write("hvinit: error: ");
	console_write(message);
	console_write("\n");
	if (log_fd >= 0 || control_fd >= 0)
		send_event("error %s", message);
	power_off(exit_code);
}

/* strerror() text with a lower-case first letter, as in "exec: x: no such file or directory". */
static const char *errno_text(int err)
{
	static char text[128];
	snprintf(text, sizeof(text), "%s", strerror(err));
	text[0] = (char)tolower((unsigned char)text[0]);
	return text;
}

/* ---- small filesystem helpers ------------------------------------------ */

static int read_small_file(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, size - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = '\0';
	while (n > 0 && isspace((unsigned char)buf[n - 1]))
		buf[--n] = '\0';
	return 0;
}

static int mkdir_p(const char *path, mode_t mode)
{
	char tmp[PATH_MAX];
	if (snprintf(tmp, sizeof(tmp), "%s", path) >= (int)sizeof(tmp)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(tmp, mode) != 0 && errno != EEXIST)
			return -1;
		*p = '/';
	}
	if (mkdir(tmp, mode) != 0 && errno != EEXIST)
		return -1;
	return 0;
}

static void mount_or_die(const char *source, const char *target, const char *fstype,
			 unsigned long flags, const char *data)
{
	if (mkdir_p(target, 0755) != 0)
		die(EXIT_INIT_FAILURE, "mkdir %s: %s", target, errno_text(errno));
	if (mount(source, target, fstype, flags, data) != 0)
		die(EXIT_INIT_FAILURE, "mount %s on %s: %s", fstype ? fstype : source, target,
		    errno_text(errno));
}

/* Makes a private device node from a sysfs "dev" file, so we never wait for devtmpfs. */
static int make_node_from_sysfs(const char *sys_dev_file, mode_t type, const char *node)
{
	char text[32];
	unsigned maj, min;
	if (read_small_file(sys_dev_file, text, sizeof(text)) != 0 ||
	    sscanf(text, "%u:%u", &maj, &min) != 2)
		return -1;
	unlink(node);
	return mknod(node, type | 0600, makedev(maj, min));
}

/* ---- kernel modules ---------------------------------------------------- */

/*
 * /lib/modules/hvm.order lists "<group> <path>" in dependency order (written by
 * initramfs.py from modules.dep); group "core" loads always, "net" only when
 * the config asks for a network.
 */
static int net_modules_loaded;

static void load_modules(const char *group)
{
	if (strcmp(group, "net") == 0) {
		if (net_modules_loaded)
			return; /* loaded already by a blank (pooled) boot: the files are gone */
		net_modules_loaded = 1;
	}
	FILE *order = fopen("/lib/modules/hvm.order", "re");
	if (!order)
		return; /* an initramfs for a kernel with everything built in */
	char line[512];
	while (fgets(line, sizeof(line), order)) {
		char line_group[32], rel_path[448];
		if (sscanf(line, "%31s %447s", line_group, rel_path) != 2 ||
		    strcmp(line_group, group) != 0)
			continue;
		char path[512];
		snprintf(path, sizeof(path), "/lib/modules/%s", rel_path);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			die(EXIT_INIT_FAILURE, "module %s: %s", rel_path, errno_text(errno));
		if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST)
			die(EXIT_INIT_FAILURE, "module %s: %s", rel_path, errno_text(errno));
		close(fd);
		TRACE(rel_path);
		unlink(path); /* frees the initramfs copy */
	}
	fclose(order);
}

/*
 * A blank (pooled) boot: the kernel command line carries BLANK_BOOT_WORD; the
 * init then waits for its config disk (attached live when the VM is claimed).
 */
#define BLANK_BOOT_WORD "hvm.blank"

static int cmdline_has_word(const char *word)
{
	char line[2048];
	if (read_small_file("/proc/cmdline", line, sizeof(line)) != 0)
		return 0;
	size_t len = strlen(word);
	for (char *p = line; (p = strstr(p, word)) != NULL; p += len) {
		int starts = p == line || p[-1] == ' ';
		int ends = p[len] == '\0' || p[len] == ' ' || p[len] == '\n';
		if (starts && ends)
			return 1;
	}
	return 0;
}

/* ---- devices found by name, never by guessing /dev/vdX ----------------- */

static int find_block_by_serial(const char *serial, const char *node)
{
	DIR *dir = opendir("/sys/block");
	if (!dir)
		return -1;
	int found = -1;
	struct dirent *entry;
	while ((entry = readdir(dir)) != NULL) {
		if (strncmp(entry->d_name, "vd", 2) != 0)
			continue;
		char path[300], value[64];
		snprintf(path, sizeof(path), "/sys/block/%s/serial", entry->d_name);
		if (read_small_file(path, value, sizeof(value)) != 0 || strcmp(value, serial) != 0)
			continue;
		snprintf(path, sizeof(path), "/sys/block/%s/dev", entry->d_name);
		if (make_node_from_sysfs(path, S_IFBLK, node) == 0)
			found = 0;
		break;
	}
	closedir(dir);
	return found;
}

static int open_port_by_name(const char *name, const char *node, int flags)
{
	DIR *dir = opendir("/sys/class/virtio-ports");
	if (!dir)
		return -1;
	int fd = -1;
	struct dirent *entry;
	while ((entry = readdir(dir)) != NULL) {
		if (entry->d_name[0] == '.')
			continue;
		char path[300], value[128];
		snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name", entry->d_name);
		if (read_small_file(path, value, sizeof(value)) != 0 || strcmp(value, name) != 0)
			continue;
		snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/dev", entry->d_name);
		if (make_node_from_sysfs(path, S_IFCHR, node) == 0)
			fd = open(node, flags | O_CLOEXEC);
		break;
	}
	closedir(dir);
	return fd;
}


static void sleep_ms(long ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/*
 * virtio-blk probes synchronously in module init, but virtio-serial port names
 * arrive asynchronously from the host: poll for both, bounded.
 */
static void find_ports_and_config_disk(int blank)
{
	double deadline = monotonic_ms() + 5000.0;
	int have_disk = 0;
	for (;;) {
		if (blank && log_fd >= 0 && control_fd >= 0) {
			/*
			 * A blank (pooled) VM: say so, then wait without a deadline for the host
			 * to attach the config disk; the host pauses the VM once it reads
			 * "waiting", so this loop costs nothing while pooled.
			 */
			send_event("waiting %.3f", monotonic_ms());
			while (find_block_by_serial(CONFIG_DISK_SERIAL, "/run/hvm/config-disk") != 0)
				sleep_ms(2);
			return;
		}
		if (log_fd < 0)
			log_fd = open_port_by_name(LOG_PORT_NAME, "/run/hvm/log-port", O_WRONLY);
		if (control_fd < 0)
			control_fd = open_port_by_name(CONTROL_PORT_NAME, "/run/hvm/control-port",
						       O_RDWR | O_NONBLOCK);
		if (!have_disk && !blank)
			have_disk = find_block_by_serial(CONFIG_DISK_SERIAL, "/run/hvm/config-disk") == 0;
		if (have_disk && log_fd >= 0 && control_fd >= 0)
			return;
		if (monotonic_ms() > deadline)
			break;
		sleep_ms(5);
	}
	if (log_fd < 0)
		console_write("hvinit: no " LOG_PORT_NAME " port, reporting on the console\n");
	if (blank)
		die(EXIT_INIT_FAILURE, "blank boot: the log and control ports were not found");
	if (!have_disk)
		die(EXIT_INIT_FAILURE, "config disk (serial %s) not found", CONFIG_DISK_SERIAL);
}

static void read_config(struct config *cfg)
{
	size_t cap = CONFIG_HEADER_LEN + CONFIG_MAX_PAYLOAD + 4;
	unsigned char *buf = malloc(cap);
	if (!buf)
		die(EXIT_INIT_FAILURE, "config: out of memory");
	int fd = open("/run/hvm/config-disk", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die(EXIT_INIT_FAILURE, "config disk: %s", errno_text(errno));
	size_t len = 0;
	while (len < cap) {
		ssize_t n = read(fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die(EXIT_INIT_FAILURE, "config disk: %s", errno_text(errno));
		if (n == 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	char err[256];
	if (config_parse(buf, len, cfg, err, sizeof(err)) != 0)
		die(EXIT_INIT_FAILURE, "%s", err);
	free(buf);
}

/* ---- root filesystem --------------------------------------------------- */

static void mount_root(const struct config *cfg)
{
	double deadline = monotonic_ms() + 3000.0;
	while (find_block_by_serial(cfg->rootfs_serial, "/run/hvm/rootfs-disk") != 0) {
		if (monotonic_ms() > deadline)
			die(EXIT_INIT_FAILURE, "rootfs disk (serial %s) not found", cfg->rootfs_serial);
		sleep_ms(5);
	}
	/* ext4 "noload": a read-only mount must not replay a journal onto the image. */
	const char *options = strcmp(cfg->rootfs_type, "ext4") == 0 ? "noload" : NULL;
	mount_or_die("/run/hvm/rootfs-disk", "/run/hvm/lower", cfg->rootfs_type, MS_RDONLY,
		     options);

	char tmpfs_options[64];
	snprintf(tmpfs_options, sizeof(tmpfs_options), "size=%lum,mode=0755", cfg->overlay_size_mib);
	mount_or_die("hvm-overlay", "/run/hvm/rw", "tmpfs", 0, tmpfs_options);
	if (mkdir("/run/hvm/rw/upper", 0755) != 0 || mkdir("/run/hvm/rw/work", 0755) != 0)
		die(EXIT_INIT_FAILURE, "overlay dirs: %s", errno_text(errno));
	mount_or_die("overlay", "/newroot", "overlay", 0,
		     "lowerdir=/run/hvm/lower,upperdir=/run/hvm/rw/upper,workdir=/run/hvm/rw/work");
}

/* MS_MOVE + chroot: pivot_root cannot leave an initramfs. */
static void switch_root(void)
{
	umount2("/proc", MNT_DETACH);
	umount2("/sys", MNT_DETACH);
	umount2("/dev", MNT_DETACH);
	if (chdir("/newroot") != 0 || mount("/newroot", "/", NULL, MS_MOVE, NULL) != 0 ||
	    chroot(".") != 0 || chdir("/") != 0)
		die(EXIT_INIT_FAILURE, "switch root: %s", errno_text(errno));
}

/* Mounted after the chroot, so an image's symlinks resolve inside the image. */
static void mount_api_filesystems(const struct config *cfg)
{
	char tmp_options[64];
	snprintf(tmp_options, sizeof(tmp_options), "size=%lum,mode=1777", cfg->overlay_size_mib);
	mount_or_die("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount_or_die("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount_or_die("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	mount_or_die("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
		     "newinstance,ptmxmode=0666,mode=0620,gid=5");
	mount_or_die("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	mount_or_die("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, tmp_options);
	if (access("/dev/ptmx", F_OK) != 0)
		symlink("pts/ptmx", "/dev/ptmx");
}

/* ---- network ----------------------------------------------------------- */

static void set_interface_up(int sock, const char *ifname)
{
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
	if (ioctl(sock, SIOCGIFFLAGS, &ifr) != 0)
		die(EXIT_INIT_FAILURE, "network: %s: %s", ifname, errno_text(errno));
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	if (ioctl(sock, SIOCSIFFLAGS, &ifr) != 0)
		die(EXIT_INIT_FAILURE, "network: %s up: %s", ifname, errno_text(errno));
}

static void find_interface_by_mac(const char *mac, char *ifname)
{
	DIR *dir = opendir("/sys/class/net");
	struct dirent *entry;
	while (dir && (entry = readdir(dir)) != NULL) {
		char path[300], value[64];
		if (entry->d_name[0] == '.' || strlen(entry->d_name) >= IFNAMSIZ)
			continue;
		snprintf(path, sizeof(path), "/sys/class/net/%s/address", entry->d_name);
		if (read_small_file(path, value, sizeof(value)) == 0 && strcasecmp(value, mac) == 0) {
			snprintf(ifname, IFNAMSIZ, "%s", entry->d_name);
			closedir(dir);
			return;
		}
	}
	if (dir)
		closedir(dir);
	die(EXIT_INIT_FAILURE, "network: no interface with MAC %s", mac);
}

/* Address/prefix on the interface, then up: the kernel adds the subnet's route itself. */
static void set_interface_address(int sock, const char *ifname, const char *ip_cidr)
{
	char address[64];
	unsigned long prefix = 32;
	snprintf(address, sizeof(address), "%s", ip_cidr);
	char *slash = strchr(address, '/');
	if (slash) {
		*slash = '\0';
		if (parse_decimal(slash + 1, 0, 32, &prefix) != 0)
			die(EXIT_INIT_FAILURE, "network: bad prefix in %s", ip_cidr);
	}
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
	struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
	sin->sin_family = AF_INET;
	if (inet_pton(AF_INET, address, &sin->sin_addr) != 1)
		die(EXIT_INIT_FAILURE, "network: bad address %s", ip_cidr);
	if (ioctl(sock, SIOCSIFADDR, &ifr) != 0)
		die(EXIT_INIT_FAILURE, "network: %s address: %s", ifname, errno_text(errno));
	sin = (struct sockaddr_in *)&ifr.ifr_netmask;
	sin->sin_family = AF_INET;
	sin->sin_addr.s_addr = htonl(prefix == 0 ? 0 : 0xffffffffu << (32 - prefix));
	if (ioctl(sock, SIOCSIFNETMASK, &ifr) != 0)
		die(EXIT_INIT_FAILURE, "network: %s netmask: %s", ifname, errno_text(errno));
	set_interface_up(sock, ifname);
}

static void configure_network(const struct config *cfg)
{
	int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (sock < 0)
		die(EXIT_INIT_FAILURE, "network: socket: %s", errno_text(errno));
	set_interface_up(sock, "lo"); /* the kernel adds 127.0.0.1/8 itself */
	if (cfg->tenant_net_ip_cidr) {
		char tenant_ifname[IFNAMSIZ];
		find_interface_by_mac(cfg->tenant_net_mac, tenant_ifname);
		set_interface_address(sock, tenant_ifname, cfg->tenant_net_ip_cidr);
	}
	if (!cfg->net_ip_cidr) {
		close(sock);
		return;
	}
	char ifname[IFNAMSIZ] = "eth0";
	if (cfg->net_mac)
		find_interface_by_mac(cfg->net_mac, ifname);
	set_interface_address(sock, ifname, cfg->net_ip_cidr);

	if (cfg->net_gateway) {
		struct rtentry route;
		memset(&route, 0, sizeof(route));
		struct sockaddr_in *dst = (struct sockaddr_in *)&route.rt_dst;
		struct sockaddr_in *gw = (struct sockaddr_in *)&route.rt_gateway;
		struct sockaddr_in *mask = (struct sockaddr_in *)&route.rt_genmask;
		dst->sin_family = gw->sin_family = mask->sin_family = AF_INET;
		if (inet_pton(AF_INET, cfg->net_gateway, &gw->sin_addr) != 1)
			die(EXIT_INIT_FAILURE, "network: bad gateway %s", cfg->net_gateway);
		route.rt_flags = RTF_UP | RTF_GATEWAY;
		route.rt_dev = ifname;
		if (ioctl(sock, SIOCADDRT, &route) != 0)
			die(EXIT_INIT_FAILURE, "network: default route: %s", errno_text(errno));
	}
	close(sock);
}

/* After the chroot: replaces (never writes through) whatever the image had. */
static void write_resolv_conf(const struct config *cfg)
{
	if (cfg->nameserverc == 0)
		return;
	mkdir("/etc", 0755);
	unlink("/etc/resolv.conf");
	int fd = open("/etc/resolv.conf", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0)
		die(EXIT_INIT_FAILURE, "resolv.conf: %s", errno_text(errno));
	for (size_t i = 0; i < cfg->nameserverc; i++) {
		char line[300];
		snprintf(line, sizeof(line) - 1, "nameserver %s", cfg->nameservers[i]);
		sanitize_line(line);
		strcat(line, "\n");
		write_all(fd, line, strlen(line));
	}
	close(fd);
}

/* ---- user and group, resolved from the image's own files --------------- */

struct identity {
	uid_t uid;
	gid_t gid;
	char name[256];
	char home[PATH_MAX];
	gid_t groups[64];
	int ngroups;
};

static int is_number(const char *text)
{
	if (!*text)
		return 0;
	for (; *text; text++)
		if (!isdigit((unsigned char)*text))
			return 0;
	return 1;
}

/* Splits an /etc/passwd or /etc/group line into at most max fields, in place. */
static int split_colon_fields(char *line, char **fields, int max)
{
	int count = 0;
	line[strcspn(line, "\n")] = '\0';
	fields[count++] = line;
	for (char *p = line; *p && count < max; p++) {
		if (*p == ':') {
			*p = '\0';
			fields[count++] = p + 1;
		}
	}
	return count;
}

/* Finds a passwd entry by name (by_name) or by uid; fills identity on success. */
static int lookup_passwd(const char *name, uid_t uid, int by_name, struct identity *id)
{
	FILE *f = fopen("/etc/passwd", "re");
	if (!f)
		return -1;
	char line[1024];
	int found = -1;
	while (fgets(line, sizeof(line), f)) {
		char *fields[7];
		if (split_colon_fields(line, fields, 7) < 7 || !is_number(fields[2]) ||
		    !is_number(fields[3]))
			continue;
		if (by_name ? strcmp(fields[0], name) != 0
			    : strtoul(fields[2], NULL, 10) != (unsigned long)uid)
			continue;
		id->uid = (uid_t)strtoul(fields[2], NULL, 10);
		id->gid = (gid_t)strtoul(fields[3], NULL, 10);
		snprintf(id->name, sizeof(id->name), "%s", fields[0]);
		snprintf(id->home, sizeof(id->home), "%s", fields[5]);
		found = 0;
		break;
	}
	fclose(f);
	return found;
}

static int lookup_group_gid(const char *name, gid_t *gid)
{
	FILE *f = fopen("/etc/group", "re");
	if (!f)
		return -1;
	char line[4096];
	int found = -1;
	while (fgets(line, sizeof(line), f)) {
		char *fields[4];
		if (split_colon_fields(line, fields, 4) >= 3 && strcmp(fields[0], name) == 0 &&
		    is_number(fields[2])) {
			*gid = (gid_t)strtoul(fields[2], NULL, 10);
			found = 0;
			break;
		}
	}
	fclose(f);
	return found;
}

/* Supplementary groups: the primary gid plus every group listing the user. */
static void collect_groups(struct identity *id)
{
	id->groups[0] = id->gid;
	id->ngroups = 1;
	if (!id->name[0])
		return;
	FILE *f = fopen("/etc/group", "re");
	if (!f)
		return;
	char line[4096];
	while (fgets(line, sizeof(line), f) && id->ngroups < 64) {
		char *fields[4];
		if (split_colon_fields(line, fields, 4) < 4 || !is_number(fields[2]))
			continue;
		gid_t gid = (gid_t)strtoul(fields[2], NULL, 10);
		for (char *member = strtok(fields[3], ","); member; member = strtok(NULL, ",")) {
			if (strcmp(member, id->name) == 0 && gid != id->gid) {
				id->groups[id->ngroups++] = gid;
				break;
			}
		}
	}
	fclose(f);
}

static void resolve_identity(const char *spec, struct identity *id)
{
	memset(id, 0, sizeof(*id));
	snprintf(id->home, sizeof(id->home), "/");
	char user[512];
	snprintf(user, sizeof(user), "%s", spec && *spec ? spec : "0");
	char *group = strchr(user, ':');
	if (group)
		*group++ = '\0';
	if (is_number(user)) {
		id->uid = (uid_t)strtoul(user, NULL, 10);
		id->gid = 0;
		lookup_passwd(NULL, id->uid, 0, id); /* optional: numeric users need no entry */
	} else if (lookup_passwd(user, 0, 1, id) != 0) {
		die(EXIT_INIT_FAILURE, "user: unable to find user %s in /etc/passwd", user);
	}
	if (group && *group) {
		if (is_number(group))
			id->gid = (gid_t)strtoul(group, NULL, 10);
		else if (lookup_group_gid(group, &id->gid) != 0)
			die(EXIT_INIT_FAILURE, "user: unable to find group %s in /etc/group", group);
	}
	collect_groups(id);
}

/* ---- persistent volumes ------------------------------------------------- */

/*
 * Each volume (ext4, formatted once by the host) is found by its serial and mounted at
 * MESOS_SANDBOX/<name> after the switch to the image's root, so the path resolves inside the
 * image as the app sees it. Its root belongs to the app's user, who must be able to write it.
 */
static void mount_volumes(const struct config *cfg, const struct identity *id)
{
	if (mkdir_p(MESOS_SANDBOX, 0755) != 0)
		die(EXIT_INIT_FAILURE, "mkdir %s: %s", MESOS_SANDBOX, errno_text(errno));
	for (size_t i = 0; i < cfg->volumec; i++) {
		char serial[VOLUME_SERIAL_MAX + 1], node[64], target[PATH_MAX];
		const char *space = strchr(cfg->volumes[i], ' ');
		snprintf(serial, sizeof(serial), "%.*s", (int)(space - cfg->volumes[i]), cfg->volumes[i]);
		snprintf(node, sizeof(node), "/dev/hvm-volume%zu", i);
		snprintf(target, sizeof(target), "%s/%s", MESOS_SANDBOX, space + 1);
		double deadline = monotonic_ms() + 3000.0;
		while (find_block_by_serial(serial, node) != 0) {
			if (monotonic_ms() > deadline)
				die(EXIT_INIT_FAILURE, "volume disk (serial %s) not found", serial);
			sleep_ms(5);
		}
		mount_or_die(node, target, "ext4", MS_NOSUID | MS_NODEV, NULL);
		if (chown(target, id->uid, id->gid) != 0)
			die(EXIT_INIT_FAILURE, "volume %s: chown: %s", target, errno_text(errno));
	}
}

/* ---- environment ------------------------------------------------------- */

#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

static const char *env_lookup(char **env, const char *name)
{
	size_t len = strlen(name);
	for (; *env; env++)
		if (strncmp(*env, name, len) == 0 && (*env)[len] == '=')
			return *env + len + 1;
	return NULL;
}

/* The runtime sends the final env; like docker, PATH and HOME get defaults if absent. */
static char **final_environment(const struct config *cfg, const struct identity *id)
{
	char **env = calloc(cfg->envc + 3, sizeof(char *));
	if (!env)
		die(EXIT_INIT_FAILURE, "env: out of memory");
	size_t n = 0;
	for (size_t i = 0; i < cfg->envc; i++)
		env[n++] = cfg->env[i];
	if (!env_lookup(env, "PATH"))
		env[n++] = "PATH=" DEFAULT_PATH;
	if (!env_lookup(env, "HOME")) {
		char *home = malloc(strlen(id->home) + 6);
		if (!home)
			die(EXIT_INIT_FAILURE, "env: out of memory");
		sprintf(home, "HOME=%s", id->home[0] ? id->home : "/");
		env[n++] = home;
	}
	env[n] = NULL;
	return env;
}

/* ---- the app ----------------------------------------------------------- */

struct child_failure {
	int stage; /* 0 setgroups/setgid/setuid, 1 chdir, 2 exec */
	int err;
};

/* execvpe() would fall back to /bin/sh on ENOEXEC; a container runtime must not. */
static int exec_in_path(char *const argv[], char **env)
{
	const char *file = argv[0];
	if (strchr(file, '/')) {
		execve(file, argv, env);
		return errno;
	}
	const char *search = env_lookup(env, "PATH");
	if (!search)
		search = DEFAULT_PATH;
	int saw_eacces = 0;
	while (*search) {
		size_t dir_len = strcspn(search, ":");
		char path[PATH_MAX];
		if (dir_len + strlen(file) + 2 <= sizeof(path)) {
			snprintf(path, sizeof(path), "%.*s/%s", (int)(dir_len ? dir_len : 1),
				 dir_len ? search : ".", file);
			execve(path, argv, env);
			if (errno == EACCES)
				saw_eacces = 1;
			else if (errno != ENOENT && errno != ENOTDIR)
				return errno;
		}
		search += dir_len;
		if (*search == ':')
			search++;
	}
	return saw_eacces ? EACCES : ENOENT;
}

static void __attribute__((noreturn)) run_child(const struct config *cfg,
						const struct identity *id, char **env, int out_w,
						int err_w, int status_w)
{
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	setsid();
	int devnull = open("/dev/null", O_RDWR);
	if (devnull >= 0)
		dup2(devnull, 0);
	dup2(out_w, 1);
	dup2(err_w, 2);
	struct child_failure failure = {0, 0};
	if (setgroups((size_t)id->ngroups, id->groups) != 0 || setgid(id->gid) != 0 ||
	    setuid(id->uid) != 0) {
		failure.err = errno;
	} else if (chdir(cfg->working_dir && cfg->working_dir[0] ? cfg->working_dir : "/") != 0) {
		failure.stage = 1;
		failure.err = errno;
	} else {
		failure.stage = 2;
		failure.err = exec_in_path(cfg->argv, env);
	}
	write(status_w, &failure, sizeof(failure));
	_exit(EXIT_INIT_FAILURE);
}

struct output_stream {
	const char *tag;
	const char *fragment_tag;
	int fd;
	char buf[4096];
	size_t len;
};

/* Sends every complete line; a line longer than the buffer goes out as fragments. */
static void pump_output(struct output_stream *s)
{
	ssize_t n = read(s->fd, s->buf + s->len, sizeof(s->buf) - s->len);
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n <= 0) {
		if (s->len)
			send_output(s->tag, s->buf, s->len);
		s->len = 0;
		close(s->fd);
		s->fd = -1;
		return;
	}
	s->len += (size_t)n;
	size_t start = 0;
	for (size_t i = 0; i < s->len; i++) {
		if (s->buf[i] == '\n') {
			send_output(s->tag, s->buf + start, i - start);
			start = i + 1;
		}
	}
	if (start == 0 && s->len == sizeof(s->buf)) {
		send_output(s->fragment_tag, s->buf, s->len);
		start = s->len;
	}
	memmove(s->buf, s->buf + start, s->len - start);
	s->len -= start;
}

static int exit_code_of(int status)
{
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return EXIT_INIT_FAILURE;
}

/* ---- exec requests: health-check commands run inside the container ------ */

#define EXEC_MAX_RUNNING 4
#define EXEC_ID_MAX 32
#define EXEC_MAX_COMMAND 4096
#define EXEC_SHELL "/bin/sh"

/* What the app's child runs with: handed to every exec request too. */
struct app_context {
	const struct config *cfg;
	const struct identity *id;
	char **env;
};

struct exec_run {
	pid_t pid; /* 0: the slot is free */
	char id[EXEC_ID_MAX + 1];
	double deadline_ms;
	int status_fd; /* the child's close-on-exec failure report */
	int timed_out;
};

static struct exec_run exec_runs[EXEC_MAX_RUNNING];

/* Answers on the control port only: exec results are not part of the durable log. */
static void __attribute__((format(printf, 1, 2))) control_reply(const char *fmt, ...)
{
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	size_t len = format_record(line, sizeof(line), fmt, ap);
	va_end(ap);
	control_send(line, len); /* best-effort: the host has gone if this fails */
}

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Hex to bytes; -1 on an odd length, a bad digit, a NUL byte or too long a command. */
static int hex_decode(const char *hex, char *out, size_t cap)
{
	size_t len = strlen(hex);
	if (len == 0 || len % 2 || len / 2 >= cap)
		return -1;
	for (size_t i = 0; i < len / 2; i++) {
		int high = hex_value(hex[2 * i]), low = hex_value(hex[2 * i + 1]);
		if (high < 0 || low < 0 || (high == 0 && low == 0))
			return -1;
		out[i] = (char)(high << 4 | low);
	}
	out[len / 2] = '\0';
	return 0;
}

static int valid_exec_id(const char *id)
{
	size_t len = strlen(id);
	if (len == 0 || len > EXEC_ID_MAX)
		return 0;
	for (; *id; id++)
		if (!isalnum((unsigned char)*id) && *id != '-')
			return 0;
	return 1;
}

static void __attribute__((noreturn)) run_exec_child(const struct app_context *app,
						     const char *command, int status_w)
{
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	setsid(); /* its own process group: a timeout kills the whole group */
	int devnull = open("/dev/null", O_RDWR);
	if (devnull >= 0) {
		dup2(devnull, 0);
		dup2(devnull, 1);
		dup2(devnull, 2);
	}
	struct child_failure failure = {0, 0};
	const struct config *cfg = app->cfg;
	if (setgroups((size_t)app->id->ngroups, app->id->groups) != 0 || setgid(app->id->gid) != 0 ||
	    setuid(app->id->uid) != 0) {
		failure.err = errno;
	} else if (chdir(cfg->working_dir && cfg->working_dir[0] ? cfg->working_dir : "/") != 0) {
		failure.stage = 1;
		failure.err = errno;
	} else {
		char *argv[] = {EXEC_SHELL, "-c", (char *)command, NULL};
		execve(EXEC_SHELL, argv, app->env);
		failure.stage = 2;
		failure.err = errno;
	}
	write(status_w, &failure, sizeof(failure));
	_exit(EXIT_CANNOT_EXECUTE);
}

/* "exec <id> <timeout_ms> <hex command>": fork /bin/sh -c <command>, answered when it ends. */
static void exec_start(const struct app_context *app, char *request)
{
	char *id = strtok(request, " ");
	char *timeout_text = strtok(NULL, " ");
	char *hex = strtok(NULL, " ");
	if (!id || !valid_exec_id(id)) {
		control_reply("exec-result - error malformed exec request");
		return;
	}
	unsigned long timeout_ms;
	static char command[EXEC_MAX_COMMAND];
	if (!timeout_text || !hex || strtok(NULL, " ") ||
	    parse_decimal(timeout_text, 1, 86400000ul, &timeout_ms) != 0 ||
	    hex_decode(hex, command, sizeof(command)) != 0) {
		control_reply("exec-result %s error malformed exec request", id);
		return;
	}
	struct exec_run *slot = NULL;
	for (int i = 0; i < EXEC_MAX_RUNNING && !slot; i++)
		if (exec_runs[i].pid == 0)
			slot = &exec_runs[i];
	if (!slot) {
		control_reply("exec-result %s error %d commands are running already", id, EXEC_MAX_RUNNING);
		return;
	}
	int status_pipe[2];
	if (pipe2(status_pipe, O_CLOEXEC) != 0) {
		control_reply("exec-result %s error pipe: %s", id, errno_text(errno));
		return;
	}
	pid_t pid = fork();
	if (pid < 0) {
		close(status_pipe[0]);
		close(status_pipe[1]);
		control_reply("exec-result %s error fork: %s", id, errno_text(errno));
		return;
	}
	if (pid == 0)
		run_exec_child(app, command, status_pipe[1]);
	close(status_pipe[1]);
	slot->pid = pid;
	snprintf(slot->id, sizeof(slot->id), "%s", id);
	slot->deadline_ms = monotonic_ms() + (double)timeout_ms;
	slot->status_fd = status_pipe[0];
	slot->timed_out = 0;
}

/* A reaped child: if it was an exec request, answer it. */
static void exec_reaped(pid_t pid, int status)
{
	for (int i = 0; i < EXEC_MAX_RUNNING; i++) {
		struct exec_run *run = &exec_runs[i];
		if (run->pid != pid)
			continue;
		struct child_failure failure;
		ssize_t n;
		do {
			n = read(run->status_fd, &failure, sizeof(failure));
		} while (n < 0 && errno == EINTR);
		close(run->status_fd);
		if (n == (ssize_t)sizeof(failure)) {
			if (failure.stage == 2)
				control_reply("exec-result %s error cannot run %s in the image: %s", run->id,
					      EXEC_SHELL, errno_text(failure.err));
			else if (failure.stage == 1)
				control_reply("exec-result %s error workdir: %s", run->id, errno_text(failure.err));
			else
				control_reply("exec-result %s error user: %s", run->id, errno_text(failure.err));
		} else if (run->timed_out) {
			control_reply("exec-result %s timeout", run->id);
		} else {
			control_reply("exec-result %s exit %d", run->id, exit_code_of(status));
		}
		run->pid = 0;
		return;
	}
}

/* Kills exec requests past their deadline; returns the next deadline (or `wake`). */
static double exec_enforce_deadlines(double now, double wake)
{
	for (int i = 0; i < EXEC_MAX_RUNNING; i++) {
		struct exec_run *run = &exec_runs[i];
		if (run->pid == 0 || run->timed_out)
			continue;
		if (now >= run->deadline_ms) {
			kill(-run->pid, SIGKILL);
			kill(run->pid, SIGKILL);
			run->timed_out = 1;
		} else if (run->deadline_ms < wake) {
			wake = run->deadline_ms;
		}
	}
	return wake;
}

/* ---- shell sessions: a PTY in the container for an interactive shell ---- */

#define SHELL_MAX_SESSIONS 8
#define SHELL_CHUNK 4096u            /* raw bytes per sh-out / sh-in record */
#define SHELL_WINDOW (64u * 1024u)   /* sh-out bytes the host has not acked yet, per session */
#define SHELL_INPUT_MAX (64u * 1024u) /* sh-in bytes the shell has not read yet, per session */
#define SHELL_DRAIN_MS 2000.0        /* after the shell exits: output still in the PTY */
#define SHELL_KILL_GRACE_MS 1000.0   /* after a close: SIGHUP, then SIGKILL */
#define SHELL_DIMENSION_MAX 1000ul
#define BASE64_LEN(n) (((n) + 2) / 3 * 4)
#define SHELL_RECORD_MAX (BASE64_LEN(SHELL_CHUNK) + EXEC_ID_MAX + 16)

struct shell_session {
	pid_t pid; /* 0: the slot is free */
	char id[EXEC_ID_MAX + 1];
	int master; /* the PTY's master side; -1 once it reported EOF/EIO or was closed */
	int status_fd;
	int quiet; /* the host hung up: nobody to report to */
	int exited;
	int status;
	double drain_until; /* exited: report the exit by then even if output is still held */
	double kill_at;     /* closed: SIGKILL the session's process group then (0: not closed) */
	size_t unacked;
	size_t input_len;
	unsigned char input[SHELL_INPUT_MAX];
};

static struct shell_session shells[SHELL_MAX_SESSIONS];

static const char base64_digits[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static size_t base64_encode(const unsigned char *in, size_t len, char *out)
{
	size_t o = 0;
	for (size_t i = 0; i < len; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16;
		if (i + 1 < len)
			v |= (uint32_t)in[i + 1] << 8;
		if (i + 2 < len)
			v |= in[i + 2];
		out[o++] = base64_digits[(v >> 18) & 63];
		out[o++] = base64_digits[(v >> 12) & 63];
		out[o++] = i + 1 < len ? base64_digits[(v >> 6) & 63] : '=';
		out[o++] = i + 2 < len ? base64_digits[v & 63] : '=';
	}
	out[o] = '\0';
	return o;
}

static int base64_value(char c)
{
	const char *p = c ? strchr(base64_digits, c) : NULL;
	return p ? (int)(p - base64_digits) : -1;
}

/* Strict: whole quads, padding only at the end; -1 on anything else or more than cap bytes. */
static long base64_decode(const char *in, unsigned char *out, size_t cap)
{
	size_t len = strlen(in), o = 0;
	if (len % 4)
		return -1;
	for (size_t i = 0; i < len; i += 4) {
		int pad = (in[i + 3] == '=') + (in[i + 2] == '=' && in[i + 3] == '=');
		if (pad && i + 4 != len)
			return -1;
		int a = base64_value(in[i]), b = base64_value(in[i + 1]);
		int c = pad >= 2 ? 0 : base64_value(in[i + 2]);
		int d = pad >= 1 ? 0 : base64_value(in[i + 3]);
		if (a < 0 || b < 0 || c < 0 || d < 0 || o + 3 - (size_t)pad > cap)
			return -1;
		uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | (uint32_t)d;
		out[o++] = (unsigned char)(v >> 16);
		if (pad < 2)
			out[o++] = (unsigned char)(v >> 8);
		if (pad < 1)
			out[o++] = (unsigned char)v;
	}
	return (long)o;
}

static struct shell_session *shell_find(const char *id)
{
	for (int i = 0; i < SHELL_MAX_SESSIONS; i++)
		if (shells[i].pid != 0 && !shells[i].quiet && strcmp(shells[i].id, id) == 0)
			return &shells[i];
	return NULL;
}

/* The app's env, plus TERM for a terminal and HOSTNAME (as docker sets it) when absent. */
static char **shell_environment(char **env, int tty)
{
	size_t count = 0;
	while (env[count])
		count++;
	char **out = calloc(count + 3, sizeof(char *));
	if (!out)
		return env;
	size_t n = 0;
	for (size_t i = 0; i < count; i++)
		out[n++] = env[i];
	if (tty && !env_lookup(env, "TERM"))
		out[n++] = "TERM=xterm-256color";
	static char hostname_var[80];
	char name[65] = "";
	if (!env_lookup(env, "HOSTNAME") && gethostname(name, sizeof(name) - 1) == 0) {
		snprintf(hostname_var, sizeof(hostname_var), "HOSTNAME=%s", name);
		out[n++] = hostname_var;
	}
	out[n] = NULL;
	return out;
}

static void __attribute__((noreturn)) run_shell_child(const struct app_context *app, int slave,
						      int tty, const char *command, int status_w)
{
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	setsid(); /* its own session: the PTY becomes its controlling terminal */
	ioctl(slave, TIOCSCTTY, 0);
	if (!tty) {
		/* A one-shot command: its bytes exactly as written, no echo, no line discipline. */
		struct termios raw;
		if (tcgetattr(slave, &raw) == 0) {
			cfmakeraw(&raw);
			tcsetattr(slave, TCSANOW, &raw);
		}
	}
	if (fchown(slave, app->id->uid, (gid_t)-1) != 0) {
		/* still usable: it is already open */
	}
	int devnull = open("/dev/null", O_RDWR);
	dup2(tty || devnull < 0 ? slave : devnull, 0);
	dup2(slave, 1);
	dup2(slave, 2);
	if (slave > 2)
		close(slave);
	struct child_failure failure = {0, 0};
	const struct config *cfg = app->cfg;
	if (setgroups((size_t)app->id->ngroups, app->id->groups) != 0 || setgid(app->id->gid) != 0 ||
	    setuid(app->id->uid) != 0) {
		failure.err = errno;
	} else if (chdir(cfg->working_dir && cfg->working_dir[0] ? cfg->working_dir : "/") != 0) {
		failure.stage = 1;
		failure.err = errno;
	} else {
		char *interactive[] = {EXEC_SHELL, "-i", NULL};
		char *with_command[] = {EXEC_SHELL, "-c", (char *)command, NULL};
		execve(EXEC_SHELL, command ? with_command : interactive, shell_environment(app->env, tty));
		failure.stage = 2;
		failure.err = errno;
	}
	write(status_w, &failure, sizeof(failure));
	_exit(EXIT_CANNOT_EXECUTE);
}

/* A PTY pair: the master non-blocking for us, the slave for the shell. */
static int open_pty(unsigned long rows, unsigned long cols, int *master_out, int *slave_out)
{
	int master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
	if (master < 0)
		return -1;
	int unlock = 0;
	int slave = -1;
	if (ioctl(master, TIOCSPTLCK, &unlock) == 0) {
		slave = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
		if (slave < 0) {
			unsigned int number;
			char path[64];
			if (ioctl(master, TIOCGPTN, &number) == 0) {
				snprintf(path, sizeof(path), "/dev/pts/%u", number);
				slave = open(path, O_RDWR | O_NOCTTY | O_CLOEXEC);
			}
		}
	}
	if (slave < 0) {
		int saved = errno;
		close(master);
		errno = saved;
		return -1;
	}
	struct winsize size = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
	ioctl(master, TIOCSWINSZ, &size);
	*master_out = master;
	*slave_out = slave;
	return 0;
}

/* "sh-open <id> <rows> <cols> <tty|run> [<hex command>]" */
static void shell_open(const struct app_context *app, char *request)
{
	char *id = strtok(request, " ");
	char *rows_text = strtok(NULL, " ");
	char *cols_text = strtok(NULL, " ");
	char *mode = strtok(NULL, " ");
	char *hex = strtok(NULL, " ");
	if (!id || !valid_exec_id(id)) {
		control_reply("sh-error - malformed sh-open");
		return;
	}
	unsigned long rows, cols;
	static char command[EXEC_MAX_COMMAND];
	int tty = mode && strcmp(mode, "tty") == 0;
	if (!rows_text || !cols_text || !mode || (!tty && strcmp(mode, "run") != 0) ||
	    strtok(NULL, " ") || parse_decimal(rows_text, 1, SHELL_DIMENSION_MAX, &rows) != 0 ||
	    parse_decimal(cols_text, 1, SHELL_DIMENSION_MAX, &cols) != 0 || (!tty && !hex) ||
	    (hex && hex_decode(hex, command, sizeof(command)) != 0)) {
		control_reply("sh-error %s malformed sh-open", id);
		return;
	}
	if (shell_find(id)) {
		control_reply("sh-error %s session id in use", id);
		return;
	}
	struct shell_session *slot = NULL;
	for (int i = 0; i < SHELL_MAX_SESSIONS && !slot; i++)
		if (shells[i].pid == 0)
			slot = &shells[i];
	if (!slot) {
		control_reply("sh-error %s %d shell sessions are open already", id, SHELL_MAX_SESSIONS);
		return;
	}
	int master, slave, status_pipe[2];
	if (open_pty(rows, cols, &master, &slave) != 0) {
		control_reply("sh-error %s pty: %s", id, errno_text(errno));
		return;
	}
	if (pipe2(status_pipe, O_CLOEXEC) != 0) {
		control_reply("sh-error %s pipe: %s", id, errno_text(errno));
		close(master);
		close(slave);
		return;
	}
	pid_t pid = fork();
	if (pid < 0) {
		control_reply("sh-error %s fork: %s", id, errno_text(errno));
		close(master);
		close(slave);
		close(status_pipe[0]);
		close(status_pipe[1]);
		return;
	}
	if (pid == 0)
		run_shell_child(app, slave, tty, hex ? command : NULL, status_pipe[1]);
	close(slave); /* only the shell holds it: its last close makes the master read EIO */
	close(status_pipe[1]);
	memset(slot, 0, offsetof(struct shell_session, input));
	slot->pid = pid;
	snprintf(slot->id, sizeof(slot->id), "%s", id);
	slot->master = master;
	slot->status_fd = status_pipe[0];
	control_reply("sh-opened %s", id);
}

/* Ends a session from the host's side: hang the terminal up, SIGKILL after a grace. */
static void shell_hang_up(struct shell_session *s, int quiet)
{
	if (s->pid == 0)
		return;
	s->quiet |= quiet;
	if (s->master >= 0) {
		close(s->master);
		s->master = -1;
	}
	if (s->kill_at == 0 && !s->exited) {
		kill(-s->pid, SIGHUP);
		kill(-s->pid, SIGCONT);
		s->kill_at = monotonic_ms() + SHELL_KILL_GRACE_MS;
	}
	s->input_len = 0;
}

/* The host hung up: its shells end, and nobody hears of it. */
static void shell_host_gone(void)
{
	for (int i = 0; i < SHELL_MAX_SESSIONS; i++)
		shell_hang_up(&shells[i], 1);
}

/* Host -> guest messages for a session (after the "sh-" prefix). */
static void shell_command(const struct app_context *app, char *command)
{
	if (strncmp(command, "open ", 5) == 0) {
		shell_open(app, command + 5);
		return;
	}
	char *verb = strtok(command, " ");
	char *id = strtok(NULL, " ");
	char *arg1 = strtok(NULL, " ");
	char *arg2 = strtok(NULL, " ");
	struct shell_session *s = verb && id && valid_exec_id(id) ? shell_find(id) : NULL;
	if (!s)
		return; /* a session that ended already: its late input is dropped */
	unsigned long value, cols;
	if (strcmp(verb, "in") == 0 && arg1 && !arg2) {
		static unsigned char data[SHELL_CHUNK + 3];
		long n = base64_decode(arg1, data, sizeof(data));
		if (n < 0 || s->master < 0)
			return;
		size_t room = SHELL_INPUT_MAX - s->input_len;
		size_t take = (size_t)n < room ? (size_t)n : room; /* a shell that never reads loses the rest */
		memcpy(s->input + s->input_len, data, take);
		s->input_len += take;
	} else if (strcmp(verb, "ack") == 0 && arg1 && !arg2 &&
		   parse_decimal(arg1, 0, 4000000000ul, &value) == 0) {
		s->unacked -= value < s->unacked ? value : s->unacked;
	} else if (strcmp(verb, "resize") == 0 && arg1 && arg2 &&
		   parse_decimal(arg1, 1, SHELL_DIMENSION_MAX, &value) == 0 &&
		   parse_decimal(arg2, 1, SHELL_DIMENSION_MAX, &cols) == 0 && s->master >= 0) {
		struct winsize size = {.ws_row = (unsigned short)value, .ws_col = (unsigned short)cols};
		ioctl(s->master, TIOCSWINSZ, &size); /* the kernel sends SIGWINCH */
	} else if (strcmp(verb, "close") == 0 && !arg1) {
		shell_hang_up(s, 0);
	}
}

/* Reads what the shell wrote, as far as the window and the control queue allow. */
static void shell_pump_output(struct shell_session *s)
{
	if (s->master < 0 || s->unacked >= SHELL_WINDOW || control_queue_room() < SHELL_RECORD_MAX)
		return;
	size_t want = SHELL_WINDOW - s->unacked;
	unsigned char data[SHELL_CHUNK];
	ssize_t n = read(s->master, data, want < sizeof(data) ? want : sizeof(data));
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n <= 0) { /* EIO: every holder of the terminal has closed it */
		close(s->master);
		s->master = -1;
		return;
	}
	if (s->quiet)
		return;
	static char record[SHELL_RECORD_MAX + 1];
	int head = snprintf(record, sizeof(record), "sh-out %s ", s->id);
	size_t len = (size_t)head + base64_encode(data, (size_t)n, record + head);
	record[len++] = '\n';
	control_send(record, len);
	s->unacked += (size_t)n;
}

static void shell_pump_input(struct shell_session *s)
{
	if (s->master < 0 || s->input_len == 0)
		return;
	ssize_t n = write(s->master, s->input, s->input_len);
	if (n <= 0)
		return; /* EAGAIN: the terminal's input is full until the shell reads */
	memmove(s->input, s->input + n, s->input_len - (size_t)n);
	s->input_len -= (size_t)n;
}

/* A reaped child: if it was a shell, note its end (reported once its output is out). */
static int shell_reaped(pid_t pid, int status)
{
	for (int i = 0; i < SHELL_MAX_SESSIONS; i++) {
		if (shells[i].pid == pid && !shells[i].exited) {
			shells[i].exited = 1;
			shells[i].status = status;
			shells[i].drain_until = monotonic_ms() + SHELL_DRAIN_MS;
			return 1;
		}
	}
	return 0;
}

/* Ends exited sessions whose output is out (or held too long), kills closed ones past their
 * grace; returns the next time something is due (or `wake`). */
static double shell_housekeeping(double now, double wake)
{
	for (int i = 0; i < SHELL_MAX_SESSIONS; i++) {
		struct shell_session *s = &shells[i];
		if (s->pid == 0)
			continue;
		if (!s->exited) {
			if (s->kill_at > 0 && now >= s->kill_at) {
				kill(-s->pid, SIGKILL);
				kill(s->pid, SIGKILL);
				s->kill_at = -1; /* done: wait for the reap */
			} else if (s->kill_at > 0 && s->kill_at < wake) {
				wake = s->kill_at;
			}
			continue;
		}
		if (s->master >= 0 && now < s->drain_until) {
			if (s->drain_until < wake)
				wake = s->drain_until;
			continue;
		}
		struct child_failure failure;
		ssize_t n;
		do {
			n = read(s->status_fd, &failure, sizeof(failure));
		} while (n < 0 && errno == EINTR);
		close(s->status_fd);
		if (s->master >= 0)
			close(s->master);
		if (!s->quiet) {
			if (n == (ssize_t)sizeof(failure) && failure.stage == 2)
				control_reply("sh-error %s cannot run %s in the image: %s", s->id, EXEC_SHELL,
					      errno_text(failure.err));
			else if (n == (ssize_t)sizeof(failure) && failure.stage == 1)
				control_reply("sh-error %s workdir: %s", s->id, errno_text(failure.err));
			else if (n == (ssize_t)sizeof(failure))
				control_reply("sh-error %s user: %s", s->id, errno_text(failure.err));
			else
				control_reply("sh-exit %s %d", s->id, exit_code_of(s->status));
		}
		s->pid = 0;
	}
	return wake;
}

/* Reads host commands (stop, exec, sh-*); returns 1 when a "stop" arrived. */
static int read_control(const struct app_context *app, char *buf, size_t *len, size_t cap,
			double *paused_until)
{
	ssize_t n = read(control_fd, buf + *len, cap - *len);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return 0;
	if (n <= 0) {
		/* No host connected: the port reports hang-up until one is; look again later. */
		*paused_until = monotonic_ms() + 200.0;
		control_queue_clear();
		shell_host_gone();
		return 0;
	}
	*len += (size_t)n;
	int stop = 0;
	size_t start = 0;
	for (size_t i = 0; i < *len; i++) {
		if (buf[i] != '\n')
			continue;
		buf[i] = '\0';
		char *command = buf + start;
		command[strcspn(command, "\r")] = '\0';
		if (strcmp(command, "stop") == 0)
			stop = 1;
		else if (strncmp(command, "exec ", 5) == 0)
			exec_start(app, command + 5);
		else if (strncmp(command, "sh-", 3) == 0)
			shell_command(app, command + 3);
		start = i + 1;
	}
	if (start == 0 && *len == cap)
		start = *len; /* an overlong garbage line: drop it */
	memmove(buf, buf + start, *len - start);
	*len -= start;
	return stop;
}

static int supervise(const struct app_context *context, pid_t app, int out_r, int err_r, int sigfd)
{
	const struct config *cfg = context->cfg;
	struct output_stream out = {.tag = "out", .fragment_tag = "out+", .fd = out_r};
	struct output_stream err = {.tag = "err", .fragment_tag = "err+", .fd = err_r};
	/* An exec request is hex-encoded: twice EXEC_MAX_COMMAND plus its header. */
	static char control_buf[2 * EXEC_MAX_COMMAND + 128];
	size_t control_len = 0;
	double control_paused_until = 0, kill_at = 0, drain_until = 0;
	int app_status = 0, app_exited = 0, stopping = 0;

	for (;;) {
		double now = monotonic_ms();
		if (app_exited && ((out.fd < 0 && err.fd < 0) || now >= drain_until))
			break;
		if (stopping && !app_exited && kill_at > 0 && now >= kill_at) {
			send_event("killing %.3f", now);
			kill(app, SIGKILL);
			kill_at = 0;
		}
		struct pollfd fds[4 + SHELL_MAX_SESSIONS];
		int shell_i[SHELL_MAX_SESSIONS];
		int nfds = 0;
		fds[nfds++] = (struct pollfd){.fd = sigfd, .events = POLLIN};
		int out_i = -1, err_i = -1, control_i = -1;
		if (out.fd >= 0) {
			out_i = nfds;
			fds[nfds++] = (struct pollfd){.fd = out.fd, .events = POLLIN};
		}
		if (err.fd >= 0) {
			err_i = nfds;
			fds[nfds++] = (struct pollfd){.fd = err.fd, .events = POLLIN};
		}
		if (control_fd >= 0 && now >= control_paused_until) {
			control_i = nfds;
			short events = POLLIN | (control_queue_pending() ? POLLOUT : 0);
			fds[nfds++] = (struct pollfd){.fd = control_fd, .events = events};
		}
		for (int i = 0; i < SHELL_MAX_SESSIONS; i++) {
			struct shell_session *s = &shells[i];
			shell_i[i] = -1;
			if (s->pid == 0 || s->master < 0)
				continue;
			short events = 0;
			if (s->unacked < SHELL_WINDOW && control_queue_room() >= SHELL_RECORD_MAX)
				events |= POLLIN;
			if (s->input_len)
				events |= POLLOUT;
			if (events) {
				shell_i[i] = nfds;
				fds[nfds++] = (struct pollfd){.fd = s->master, .events = events};
			}
		}
		double wake = now + 1000.0;
		if (control_fd >= 0 && control_paused_until > now && control_paused_until < wake)
			wake = control_paused_until;
		if (kill_at > 0 && kill_at < wake)
			wake = kill_at;
		if (app_exited && drain_until < wake)
			wake = drain_until;
		wake = exec_enforce_deadlines(now, wake);
		wake = shell_housekeeping(now, wake);
		int timeout = (int)(wake - now) + 1;
		if (poll(fds, (nfds_t)nfds, timeout < 0 ? 0 : timeout) < 0 && errno != EINTR)
			die(EXIT_INIT_FAILURE, "poll: %s", errno_text(errno));

		int stop_requested = 0;
		if (fds[0].revents & POLLIN) {
			struct signalfd_siginfo info;
			while (read(sigfd, &info, sizeof(info)) == sizeof(info)) {
				if (info.ssi_signo == SIGTERM || info.ssi_signo == SIGINT)
					stop_requested = 1; /* e.g. ctrl-alt-del from the host */
			}
			int status;
			pid_t pid;
			/* PID 1 reaps everything: orphans are re-parented to us. */
			while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
				if (pid == app && !app_exited) {
					app_exited = 1;
					app_status = status;
					/* Output still in flight is worth a short wait; a daemonised child
					 * holding the pipes open is not. */
					drain_until = monotonic_ms() + 300.0;
				} else if (!shell_reaped(pid, status)) {
					exec_reaped(pid, status);
				}
			}
		}
		if (out_i >= 0 && fds[out_i].revents)
			pump_output(&out);
		if (err_i >= 0 && fds[err_i].revents)
			pump_output(&err);
		for (int i = 0; i < SHELL_MAX_SESSIONS; i++) {
			if (shell_i[i] < 0 || !fds[shell_i[i]].revents)
				continue;
			struct shell_session *s = &shells[i];
			short revents = fds[shell_i[i]].revents;
			if (revents & POLLOUT)
				shell_pump_input(s);
			if (fds[shell_i[i]].events & POLLIN)
				shell_pump_output(s);
			else if (revents & (POLLHUP | POLLERR))
				s->input_len = 0; /* nobody reads the terminal any more */
		}
		if (control_i >= 0 && (fds[control_i].revents & POLLOUT))
			control_flush();
		if (control_i >= 0 && (fds[control_i].revents & ~POLLOUT))
			stop_requested |= read_control(context, control_buf, &control_len,
						       sizeof(control_buf), &control_paused_until);
		if (stop_requested && !stopping && !app_exited) {
			stopping = 1;
			send_event("stopping %.3f", monotonic_ms());
			kill(app, SIGTERM);
			kill_at = monotonic_ms() + (double)cfg->stop_grace_s * 1000.0;
			if (kill_at <= monotonic_ms())
				kill_at = monotonic_ms() + 0.001;
		}
	}
	if (out.fd >= 0 && out.len)
		send_output(out.tag, out.buf, out.len);
	if (err.fd >= 0 && err.len)
		send_output(err.tag, err.buf, err.len);
	return exit_code_of(app_status);
}

static int start_and_supervise(const struct config *cfg, const struct identity *id, char **env)
{
	sigset_t handled;
	sigemptyset(&handled);
	sigaddset(&handled, SIGCHLD);
	sigaddset(&handled, SIGTERM);
	sigaddset(&handled, SIGINT);
	sigprocmask(SIG_BLOCK, &handled, NULL);
	int sigfd = signalfd(-1, &handled, SFD_NONBLOCK | SFD_CLOEXEC);
	int out_pipe[2], err_pipe[2], status_pipe[2];
	if (sigfd < 0 || pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0 ||
	    pipe2(status_pipe, O_CLOEXEC) != 0)
		die(EXIT_INIT_FAILURE, "pipes: %s", errno_text(errno));

	oom_kills_before = read_oom_kill_count();
	oom_baseline_taken = 1;
	pid_t app = fork();
	if (app < 0)
		die(EXIT_INIT_FAILURE, "fork: %s", errno_text(errno));
	if (app == 0)
		run_child(cfg, id, env, out_pipe[1], err_pipe[1], status_pipe[1]);
	close(out_pipe[1]);
	close(err_pipe[1]);
	close(status_pipe[1]);

	/* The status pipe is close-on-exec: EOF without data means execve succeeded. */
	struct child_failure failure;
	ssize_t n;
	do {
		n = read(status_pipe[0], &failure, sizeof(failure));
	} while (n < 0 && errno == EINTR);
	close(status_pipe[0]);
	if (n == (ssize_t)sizeof(failure)) {
		waitpid(app, NULL, 0);
		if (failure.stage == 2)
			die(failure.err == ENOENT || failure.err == ENOTDIR ? EXIT_NOT_FOUND
									    : EXIT_CANNOT_EXECUTE,
			    "exec: %s: %s", cfg->argv[0], errno_text(failure.err));
		if (failure.stage == 1)
			die(EXIT_CANNOT_EXECUTE, "workdir: %s: %s", cfg->working_dir,
			    errno_text(failure.err));
		die(EXIT_INIT_FAILURE, "user %s: %s", cfg->user ? cfg->user : "",
		    errno_text(failure.err));
	}
	send_event("started %.3f", monotonic_ms());
	fcntl(out_pipe[0], F_SETFL, O_NONBLOCK);
	fcntl(err_pipe[0], F_SETFL, O_NONBLOCK);
	struct app_context context = {.cfg = cfg, .id = id, .env = env};
	return supervise(&context, app, out_pipe[0], err_pipe[0], sigfd);
}

int main(void)
{
	init_started_ms = monotonic_ms();
	umask(022);
	if (getpid() != 1) {
		fprintf(stderr, "hvinit: must run as PID 1\n");
		return 1;
	}
	console_fd = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
	/* ctrl-alt-del becomes SIGINT to us, which we treat as stop. */
	reboot(RB_DISABLE_CAD);

	mount_or_die("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount_or_die("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount_or_die("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	if (console_fd < 0)
		console_fd = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
	if (mkdir_p("/run/hvm", 0700) != 0)
		die(EXIT_INIT_FAILURE, "mkdir /run/hvm: %s", errno_text(errno));

	TRACE("mounted");
	load_modules("core");
	int blank = cmdline_has_word(BLANK_BOOT_WORD);
	if (blank)
		load_modules("net"); /* the NICs a claim attaches find their drivers loaded */
	TRACE("modules");
	find_ports_and_config_disk(blank);
	if (blank)
		init_started_ms = monotonic_ms(); /* claimed now: init_to_exec leaves out the wait */
	send_event("init %.3f", init_started_ms);
	TRACE("ports+config disk");

	struct config cfg;
	read_config(&cfg);
	if (cfg.net_ip_cidr || cfg.tenant_net_ip_cidr)
		load_modules("net");
	if (cfg.hostname && cfg.hostname[0] && sethostname(cfg.hostname, strlen(cfg.hostname)) != 0)
		die(EXIT_INIT_FAILURE, "hostname: %s", errno_text(errno));
	configure_network(&cfg);
	TRACE("net");

	mount_root(&cfg);
	TRACE("root mounted");
	switch_root();
	mount_api_filesystems(&cfg);
	write_resolv_conf(&cfg);
	TRACE("switched");

	struct identity id;
	resolve_identity(cfg.user, &id);
	mount_volumes(&cfg, &id);
	TRACE("volumes");
	if (cfg.working_dir && cfg.working_dir[0] && mkdir_p(cfg.working_dir, 0755) != 0)
		die(EXIT_CANNOT_EXECUTE, "workdir %s: %s", cfg.working_dir, errno_text(errno));
	char **env = final_environment(&cfg, &id);

	int exit_code = start_and_supervise(&cfg, &id, env);
	/* The app is gone: nothing else in the VM may outlive it. */
	kill(-1, SIGKILL);
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
	power_off(exit_code);
}
#endif
