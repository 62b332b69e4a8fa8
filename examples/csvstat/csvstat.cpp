// csvstat: a per-column summary of a CSV table (RFC 4180), in C++17.
//
// Usage: csvstat [FILE]     (no FILE, or "-", reads standard input)
//
// The first record is the header. Records are separated by LF or CRLF;
// fields by commas; a field may be quoted with double quotes, inside which
// commas, line breaks and doubled quotes ("") are data. Blank lines are
// skipped. For each column it prints the number of non-empty and empty
// values and then, when every non-empty value is a decimal number, its
// minimum, maximum, mean and sum; otherwise the number of distinct values and
// the most frequent one (ties: the smallest in byte order).
//
// Exit codes: 0 ok, 1 bad input (with one line on standard error), 2 usage.
// Built with -fno-exceptions: Debian's wasm32-wasi libc++ has no exception
// support, so nothing here throws or catches (allocation failure aborts).

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

namespace {

struct Column {
    std::string name;
    long count = 0;  // non-empty values
    long empty = 0;
    bool numeric = true;  // every non-empty value so far is a number
    double min = 0, max = 0, sum = 0;
    std::map<std::string, long> values;  // non-empty values, for text columns
};

// A decimal number: [+-]? (digits [. digits?] | . digits) ([eE] [+-]? digits)?
// No spaces, no "inf"/"nan", no hexadecimal: what strtod alone would accept
// is wider than what a CSV reader should call a number.
bool is_number(const std::string& s) {
    size_t i = 0, n = s.size();
    if (i < n && (s[i] == '+' || s[i] == '-')) i++;
    size_t int_digits = 0, frac_digits = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9') i++, int_digits++;
    if (i < n && s[i] == '.') {
        i++;
        while (i < n && s[i] >= '0' && s[i] <= '9') i++, frac_digits++;
    }
    if (int_digits + frac_digits == 0) return false;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) i++;
        size_t exp_digits = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9') i++, exp_digits++;
        if (exp_digits == 0) return false;
    }
    return i == n;
}

// A value between double quotes, with quotes, backslashes and control bytes
// escaped, so that every output line is one line whatever the input holds.
std::string quoted(const std::string& s) {
    std::string out = "\"";
    for (unsigned char c : s) {
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if (c < 0x20 || c == 0x7f) {
                    char buf[5];
                    std::snprintf(buf, sizeof buf, "\\x%02x", c);
                    out += buf;
                } else {
                    out += static_cast<char>(c);
                }
        }
    }
    return out + "\"";
}

[[noreturn]] void fail(int code, const std::string& message) {
    std::fprintf(stderr, "csvstat: %s\n", message.c_str());
    std::exit(code);
}

// The buffer is static, not on the stack: a wasm32-wasi program has a 64 KiB
// stack by default (wasm-ld's -z stack-size), and a 64 KiB local array alone
// would overflow it. (The module is also linked with --stack-first, so an
// overflow traps instead of silently overwriting static data.)
bool read_all(std::FILE* f, std::string& out) {
    static char buf[16384];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
    return !std::ferror(f);
}

// Splits the input into records of fields. Returns false with a message on a
// quote that is never closed or a quote in the middle of an unquoted field.
bool parse(const std::string& in, std::vector<std::vector<std::string>>& records,
           std::vector<long>& lines, std::string& error) {
    size_t i = 0, n = in.size();
    long line = 1;
    while (i < n) {
        // Blank line (LF or CRLF): skipped.
        if (in[i] == '\n') { i++, line++; continue; }
        if (in[i] == '\r' && i + 1 < n && in[i + 1] == '\n') { i += 2, line++; continue; }
        std::vector<std::string> fields;
        long start_line = line;
        for (;;) {
            std::string field;
            if (i < n && in[i] == '"') {
                i++;
                for (;;) {
                    if (i >= n) {
                        error = "line " + std::to_string(start_line) + ": unterminated quoted field";
                        return false;
                    }
                    char c = in[i++];
                    if (c == '"') {
                        if (i < n && in[i] == '"') { field += '"'; i++; continue; }
                        break;
                    }
                    if (c == '\n') line++;
                    field += c;
                }
                if (i < n && in[i] != ',' && in[i] != '\n' && !(in[i] == '\r' && i + 1 < n && in[i + 1] == '\n')) {
                    error = "line " + std::to_string(line) + ": text after a closing quote";
                    return false;
                }
            } else {
                while (i < n && in[i] != ',' && in[i] != '\n' && !(in[i] == '\r' && i + 1 < n && in[i + 1] == '\n')) {
                    if (in[i] == '"') {
                        error = "line " + std::to_string(line) + ": quote inside an unquoted field";
                        return false;
                    }
                    field += in[i++];
                }
            }
            fields.push_back(std::move(field));
            if (i < n && in[i] == ',') { i++; continue; }
            // End of record: LF, CRLF or end of input.
            if (i < n && in[i] == '\r') i++;
            if (i < n && in[i] == '\n') { i++; line++; }
            break;
        }
        records.push_back(std::move(fields));
        lines.push_back(start_line);
    }
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc > 2) fail(2, "usage: csvstat [FILE]");
    std::string path = argc == 2 ? argv[1] : "-";
    std::string input;
    if (path == "-") {
        if (!read_all(stdin, input)) fail(1, "-: cannot read: " + std::string(std::strerror(errno)));
    } else {
        std::FILE* f = std::fopen(path.c_str(), "rb");
        if (f == nullptr) fail(1, path + ": cannot open: " + std::strerror(errno));
        bool ok = read_all(f, input);
        int saved = errno;
        std::fclose(f);
        if (!ok) fail(1, path + ": cannot read: " + std::strerror(saved));
    }

    std::vector<std::vector<std::string>> records;
    std::vector<long> lines;
    std::string error;
    if (!parse(input, records, lines, error)) fail(1, path + ": " + error);
    if (records.empty()) fail(1, path + ": no header");

    std::vector<Column> columns(records[0].size());
    for (size_t c = 0; c < columns.size(); c++) columns[c].name = records[0][c];
    for (size_t r = 1; r < records.size(); r++) {
        const auto& fields = records[r];
        if (fields.size() != columns.size()) {
            fail(1, path + ": line " + std::to_string(lines[r]) + ": " + std::to_string(fields.size()) +
                        " fields, the header has " + std::to_string(columns.size()));
        }
        for (size_t c = 0; c < columns.size(); c++) {
            Column& col = columns[c];
            const std::string& v = fields[c];
            if (v.empty()) { col.empty++; continue; }
            col.count++;
            col.values[v]++;
            if (!col.numeric) continue;
            if (!is_number(v)) { col.numeric = false; continue; }
            double x = std::strtod(v.c_str(), nullptr);
            if (!std::isfinite(x)) { col.numeric = false; continue; }  // overflow: not a usable number
            if (col.count == 1 || x < col.min) col.min = x;
            if (col.count == 1 || x > col.max) col.max = x;
            col.sum += x;
        }
    }

    std::printf("rows: %zu\ncolumns: %zu\n", records.size() - 1, columns.size());
    for (const Column& col : columns) {
        std::printf("%s: count=%ld empty=%ld", quoted(col.name).c_str(), col.count, col.empty);
        if (col.count == 0) {
            std::printf(" type=empty\n");
        } else if (col.numeric) {
            std::printf(" type=number min=%.15g max=%.15g mean=%.15g sum=%.15g\n", col.min, col.max,
                        col.sum / static_cast<double>(col.count), col.sum);
        } else {
            const std::string* top = nullptr;
            long top_count = 0;
            for (const auto& [value, n] : col.values) {  // byte order: the first of a tie wins
                if (n > top_count) top = &value, top_count = n;
            }
            std::printf(" type=text distinct=%zu top=%s (%ld)\n", col.values.size(), quoted(*top).c_str(), top_count);
        }
    }
    if (std::fflush(stdout) != 0) fail(1, std::string("cannot write: ") + std::strerror(errno));
    return 0;
}
