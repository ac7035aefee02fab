#include "protocol/infer_request.h"

#include <algorithm>
#include <cmath>
#include <charconv>
#include <limits>
#include <string>

namespace modelserve::protocol {

// Note [Wire format]
// ~~~~~~~~~~~~~~~~~~
// The parser answers what Python's protobuf (upb) answers for the same bytes, field by field:
// tests/test_protocol.py compares the two on generated and mutated messages, and
// bench/fuzz/fuzz_infer_request.py does so at scale under the sanitizers. What upb does, and so
// what this does:
//   * A tag is a varint of at most 5 bytes whose value fits 32 bits; field number 0, wire types
//     6 and 7, and an end-group tag outside its group are refused.
//   * A varint is at most 10 bytes (the 10th byte's bits past 64 are dropped, as upb does).
//     int32 takes the low 32 bits of the 64-bit value, uint32 the low 32 bits, bool any nonzero.
//   * A field whose wire type is not its declared one is an unknown field: skipped, as are
//     unknown field numbers. Groups (wire type 3) are skipped with their nested fields; the end
//     tag must carry the start tag's number.
//   * Nesting: messages and groups below the top level may nest 100 deep (upb's default
//     recursion limit for Python); the 101st level is refused.
//   * Singular fields: the last one wins; a singular message given twice merges (contents
//     concatenate their repeated fields, an InferParameter takes the oneof member set last).
//   * Repeated scalars arrive packed or unpacked, both may appear, interleaved; a packed fixed32
//     or fixed64 payload must be a multiple of 4 or 8 bytes, a packed varint payload must end
//     on a varint boundary.
//   * `string` fields (proto3) must be valid UTF-8 (strict: no overlong forms, no surrogates,
//     nothing past U+10FFFF); `bytes` fields are not checked. A string field skipped as unknown
//     (wrong wire type) is not checked either.
//   * Lengths are checked against the bytes left, without overflow, before anything is read.
// Errors name the field path (inputs[1].contents.fp32_contents) and the byte offset of the
// field's tag or of the byte where the problem lies.

// Note [Map entries]
// ~~~~~~~~~~~~~~~~~~
// A map field is a repeated message of (key = 1, value = 2). A missing key is "", a missing value
// an empty InferParameter; a value given twice in one entry merges; of two entries with the same
// key the later one wins whole (no merge). One upb quirk matters: an entry that holds any unknown
// field (another field number, or key or value with the wrong wire type, a group included) is not
// put in the map at all; upb moves it to the parent's unknown fields (its proto2 closed-enum
// handling, applied to every map). Its key and value are still parsed and checked, so a bad
// UTF-8 key in such an entry still refuses the message. Entries are collected in wire order and
// made unique once the message ends: a stable sort by key keeps the last of each key, so a map of
// n entries costs O(n log n) however hostile.

namespace {

constexpr int kMaxDepth = 100;

struct PathNode {
  const PathNode* parent;
  const char* name;
  int64_t index;  // -1: not an element of a repeated field
};

void append_path(std::string& out, const PathNode* node) {
  if (node == nullptr || node->name == nullptr) return;
  append_path(out, node->parent);
  if (!out.empty()) out += '.';
  out += node->name;
  if (node->index >= 0) out += "[" + std::to_string(node->index) + "]";
}

std::string path_str(const PathNode* node) {
  std::string out;
  append_path(out, node);
  return out.empty() ? "ModelInferRequest" : out;
}

// Strict UTF-8, as upb (utf8_range) and Python's decode("utf-8") define it.
bool valid_utf8(const uint8_t* p, size_t n) {
  const uint8_t* end = p + n;
  while (p < end) {
    uint8_t b = *p;
    if (b < 0x80) {
      ++p;
      continue;
    }
    size_t len;
    uint32_t min;
    uint32_t cp;
    if ((b & 0xE0) == 0xC0) {
      len = 2, min = 0x80, cp = b & 0x1F;
    } else if ((b & 0xF0) == 0xE0) {
      len = 3, min = 0x800, cp = b & 0x0F;
    } else if ((b & 0xF8) == 0xF0) {
      len = 4, min = 0x10000, cp = b & 0x07;
    } else {
      return false;
    }
    if (static_cast<size_t>(end - p) < len) return false;
    for (size_t i = 1; i < len; ++i) {
      if ((p[i] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (p[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    p += len;
  }
  return true;
}

size_t fixed_size(ContentsField f) {
  return f == ContentsField::kFp32 ? 4 : f == ContentsField::kFp64 ? 8 : 0;  // 0: a varint field
}

// The wire type an unpacked element of `f` has.
uint32_t element_wire_type(ContentsField f) {
  return f == ContentsField::kFp32 ? 5 : f == ContentsField::kFp64 ? 1 : 0;
}

class Parser {
 public:
  explicit Parser(const uint8_t* base) : base_(base) {}

  void parse_request(const uint8_t* p, const uint8_t* end, InferRequest& out) {
    const PathNode root{nullptr, nullptr, -1};
    std::vector<Parameters::Entry> params;
    while (p < end) {
      const uint8_t* start = p;
      uint32_t tag = read_tag(p, end, &root);
      uint32_t wire = tag & 7;
      if (wire == 2) {
        switch (tag >> 3) {
          case 1: out.model_name = read_string(p, end, {&root, "model_name", -1}, start); continue;
          case 2: out.model_version = read_string(p, end, {&root, "model_version", -1}, start); continue;
          case 3: out.id = read_string(p, end, {&root, "id", -1}, start); continue;
          case 4: {
            ByteView v = read_bytes(p, end, {&root, "parameters", int64_t(params.size())}, start);
            parse_entry(v, params, {&root, "parameters", int64_t(params.size())}, kMaxDepth - 1);
            continue;
          }
          case 5: {
            const PathNode node{&root, "inputs", int64_t(out.inputs.size())};
            ByteView v = read_bytes(p, end, node, start);
            parse_input(v, out.inputs.emplace_back(), node, kMaxDepth - 1);
            continue;
          }
          case 6: {
            const PathNode node{&root, "outputs", int64_t(out.outputs.size())};
            ByteView v = read_bytes(p, end, node, start);
            parse_output(v, out.outputs.emplace_back(), node, kMaxDepth - 1);
            continue;
          }
          case 7:
            out.raw_input_contents.push_back(
                read_bytes(p, end, {&root, "raw_input_contents", int64_t(out.raw_input_contents.size())}, start));
            continue;
          default: break;
        }
      }
      skip_field(p, end, tag, start, &root, kMaxDepth);
    }
    finish_map(params, out.parameters);
  }

 private:
  template <typename... Args>
  [[noreturn]] void fail(const PathNode* path, const uint8_t* at, Args&&... what) const {
    MS_FAIL(kInvalidArgument, path_str(path), ": ", std::forward<Args>(what)..., " at byte ", at - base_);
  }

  // A varint at p: advances p, or fails naming `path` (truncated, or longer than 10 bytes).
  uint64_t read_varint(const uint8_t*& p, const uint8_t* end, const PathNode* path) const {
    const uint8_t* start = p;
    uint64_t v = 0;
    for (int i = 0; i < 10; ++i) {
      if (p == end) fail(path, start, "truncated varint");
      uint8_t b = *p++;
      v |= uint64_t(b & 0x7F) << (7 * i);  // i == 9: only the lowest bit stays in 64 bits
      if (!(b & 0x80)) return v;
    }
    fail(path, start, "varint longer than 10 bytes");
  }

  uint32_t read_tag(const uint8_t*& p, const uint8_t* end, const PathNode* path) const {
    const uint8_t* start = p;
    uint32_t v = 0;
    for (int i = 0; i < 5; ++i) {
      if (p == end) fail(path, start, "truncated tag");
      uint8_t b = *p++;
      if (i == 4 && b > 0x0F) fail(path, start, "tag does not fit 32 bits");
      v |= uint32_t(b & 0x7F) << (7 * i);
      if (!(b & 0x80)) {
        if ((v >> 3) == 0) fail(path, start, "field number 0");
        return v;
      }
    }
    fail(path, start, "tag longer than 5 bytes");
  }

  // A length-delimited value (the tag already read): its bytes, checked to lie inside [p, end).
  ByteView read_bytes(const uint8_t*& p, const uint8_t* end, const PathNode& path, const uint8_t* tag_at) const {
    uint64_t len = read_varint(p, end, &path);
    if (len > static_cast<uint64_t>(end - p)) {
      fail(&path, tag_at, "length ", len, " runs past the end of its message (", end - p, " bytes left)");
    }
    ByteView v{p, static_cast<size_t>(len)};
    p += len;
    return v;
  }

  ByteView read_string(const uint8_t*& p, const uint8_t* end, const PathNode& path, const uint8_t* tag_at) const {
    ByteView v = read_bytes(p, end, path, tag_at);
    if (!valid_utf8(v.data, v.size)) fail(&path, v.data, "string field is not valid UTF-8");
    return v;
  }

  void read_fixed(const uint8_t*& p, const uint8_t* end, size_t n, const PathNode* path, const uint8_t* tag_at) const {
    if (static_cast<size_t>(end - p) < n) fail(path, tag_at, "truncated fixed", n * 8, " value");
    p += n;
  }

  // Skips the value of an unknown field whose tag (at tag_at) was just read. `depth`: the nesting
  // levels still allowed below the message the field is in.
  void skip_field(const uint8_t*& p, const uint8_t* end, uint32_t tag, const uint8_t* tag_at, const PathNode* path,
                  int depth) const {
    const uint32_t number = tag >> 3;
    switch (tag & 7) {
      case 0: read_varint(p, end, path); return;
      case 1: read_fixed(p, end, 8, path, tag_at); return;
      case 2: {
        uint64_t len = read_varint(p, end, path);
        if (len > static_cast<uint64_t>(end - p)) {
          fail(path, tag_at, "unknown field ", number, ": length ", len, " runs past the end of its message (",
               end - p, " bytes left)");
        }
        p += len;
        return;
      }
      case 3: {
        if (depth == 0) fail(path, tag_at, "group of unknown field ", number, " nests deeper than ", kMaxDepth);
        while (true) {
          if (p == end) fail(path, tag_at, "group of unknown field ", number, " has no end-group tag");
          const uint8_t* start = p;
          uint32_t inner = read_tag(p, end, path);
          if ((inner & 7) == 4) {
            if ((inner >> 3) != number) {
              fail(path, start, "end-group tag of field ", inner >> 3, " inside the group of field ", number);
            }
            return;
          }
          skip_field(p, end, inner, start, path, depth - 1);
        }
      }
      case 4: fail(path, tag_at, "end-group tag of field ", number, " without a start-group tag");
      case 5: read_fixed(p, end, 4, path, tag_at); return;
      default: fail(path, tag_at, "field ", number, " has invalid wire type ", tag & 7);
    }
  }

  void parse_parameter(ByteView v, InferParameter& out, const PathNode& path, int depth) const {
    const uint8_t* p = v.data;
    const uint8_t* end = p + v.size;
    while (p < end) {
      const uint8_t* start = p;
      uint32_t tag = read_tag(p, end, &path);
      switch (tag) {
        case (1 << 3) | 0:
          out.bool_value = read_varint(p, end, &path) != 0;
          out.kind = ParameterKind::kBool;
          continue;
        case (2 << 3) | 0:
          out.int64_value = static_cast<int64_t>(read_varint(p, end, &path));
          out.kind = ParameterKind::kInt64;
          continue;
        case (3 << 3) | 2:
          out.string_value = read_string(p, end, {&path, "string_param", -1}, start);
          out.kind = ParameterKind::kString;
          continue;
        case (4 << 3) | 1: {
          read_fixed(p, end, 8, &path, start);
          std::memcpy(&out.double_value, p - 8, 8);
          out.kind = ParameterKind::kDouble;
          continue;
        }
        case (5 << 3) | 0:
          out.uint64_value = read_varint(p, end, &path);
          out.kind = ParameterKind::kUint64;
          continue;
        default: skip_field(p, end, tag, start, &path, depth);
      }
    }
  }

  // One map entry (Note [Map entries]); appended to `entries` unless it holds unknown fields.
  // `depth`, here and below: the nesting levels still allowed below the message being parsed.
  void parse_entry(ByteView v, std::vector<Parameters::Entry>& entries, const PathNode& path, int depth) const {
    Parameters::Entry entry;
    bool unknown = false;
    const uint8_t* p = v.data;
    const uint8_t* end = p + v.size;
    while (p < end) {
      const uint8_t* start = p;
      uint32_t tag = read_tag(p, end, &path);
      if (tag == ((1 << 3) | 2)) {
        entry.key = read_string(p, end, {&path, "key", -1}, start);
      } else if (tag == ((2 << 3) | 2)) {
        const PathNode node{&path, "value", -1};
        ByteView value = read_bytes(p, end, node, start);
        parse_parameter(value, entry.value, node, depth - 1);
      } else {
        skip_field(p, end, tag, start, &path, depth);
        unknown = true;
      }
    }
    if (!unknown) entries.push_back(entry);
  }

  static void finish_map(std::vector<Parameters::Entry>& entries, Parameters& out) {
    std::stable_sort(entries.begin(), entries.end(),
                     [](const Parameters::Entry& a, const Parameters::Entry& b) { return a.key.str() < b.key.str(); });
    out.entries.clear();
    out.entries.reserve(entries.size());
    for (size_t i = 0; i < entries.size(); ++i) {
      if (i + 1 < entries.size() && entries[i + 1].key.str() == entries[i].key.str()) continue;  // a later one wins
      out.entries.push_back(entries[i]);
    }
  }

  // A packed payload of `field`: its element count, checking that it is whole.
  size_t packed_count(ByteView v, ContentsField field, const PathNode& path) const {
    size_t width = fixed_size(field);
    if (width != 0) {
      if (v.size % width != 0) {
        fail(&path, v.data, "packed length ", v.size, " is not a multiple of ", width);
      }
      return v.size / width;
    }
    size_t n = 0;
    const uint8_t* p = v.data;
    const uint8_t* end = p + v.size;
    while (p < end) {
      read_varint(p, end, &path);
      ++n;
    }
    return n;
  }

  void parse_contents(ByteView v, InferTensorContents& out, const PathNode& path, int depth) const {
    static const char* const names[kNumContentsFields] = {
        "bool_contents", "int_contents", "int64_contents", "uint_contents",
        "uint64_contents", "fp32_contents", "fp64_contents", "bytes_contents"};
    const uint8_t* p = v.data;
    const uint8_t* end = p + v.size;
    while (p < end) {
      const uint8_t* start = p;
      uint32_t tag = read_tag(p, end, &path);
      const uint32_t number = tag >> 3;
      const uint32_t wire = tag & 7;
      if (number < 1 || number > 8) {
        skip_field(p, end, tag, start, &path, depth);
        continue;
      }
      const auto field = static_cast<ContentsField>(number - 1);
      const PathNode node{&path, names[number - 1], -1};
      ContentsElements& elements = out[field];
      if (field == ContentsField::kBytes) {
        if (wire != 2) {
          skip_field(p, end, tag, start, &path, depth);
          continue;
        }
        elements.elements.push_back(read_bytes(p, end, node, start));
        ++elements.count;
      } else if (wire == 2) {
        ByteView payload = read_bytes(p, end, node, start);
        size_t n = packed_count(payload, field, node);
        if (n != 0) {
          elements.chunks.push_back({payload, n, true});
          elements.count += n;
        }
      } else if (wire == element_wire_type(field)) {
        if (wire == 0) {
          read_varint(p, end, &node);
        } else {
          read_fixed(p, end, fixed_size(field), &node, start);
        }
        // Note [Wire format]: consecutive unpacked elements form one chunk of (tag, value) pairs.
        if (!elements.chunks.empty() && !elements.chunks.back().packed &&
            elements.chunks.back().bytes.data + elements.chunks.back().bytes.size == start) {
          ContentsChunk& run = elements.chunks.back();
          run.bytes.size = static_cast<size_t>(p - run.bytes.data);
          ++run.count;
        } else {
          elements.chunks.push_back({{start, static_cast<size_t>(p - start)}, 1, false});
        }
        ++elements.count;
      } else {
        skip_field(p, end, tag, start, &path, depth);
      }
    }
  }

  void parse_input(ByteView v, InferInputTensor& out, const PathNode& path, int depth) const {
    std::vector<Parameters::Entry> params;
    const uint8_t* p = v.data;
    const uint8_t* end = p + v.size;
    while (p < end) {
      const uint8_t* start = p;
      uint32_t tag = read_tag(p, end, &path);
      switch (tag) {
        case (1 << 3) | 2: out.name = read_string(p, end, {&path, "name", -1}, start); continue;
        case (2 << 3) | 2: out.datatype = read_string(p, end, {&path, "datatype", -1}, start); continue;
        case (3 << 3) | 0: out.shape.push_back(static_cast<int64_t>(read_varint(p, end, &path))); continue;
        case (3 << 3) | 2: {
          const PathNode node{&path, "shape", -1};
          ByteView payload = read_bytes(p, end, node, start);
          const uint8_t* q = payload.data;
          const uint8_t* q_end = q + payload.size;
          while (q < q_end) out.shape.push_back(static_cast<int64_t>(read_varint(q, q_end, &node)));
          continue;
        }
        case (4 << 3) | 2: {
          const PathNode node{&path, "parameters", int64_t(params.size())};
          parse_entry(read_bytes(p, end, node, start), params, node, depth - 1);
          continue;
        }
        case (5 << 3) | 2: {
          const PathNode node{&path, "contents", -1};
          ByteView contents = read_bytes(p, end, node, start);
          out.has_contents = true;
          parse_contents(contents, out.contents, node, depth - 1);
          continue;
        }
        default: skip_field(p, end, tag, start, &path, depth);
      }
    }
    finish_map(params, out.parameters);
  }

  void parse_output(ByteView v, InferRequestedOutputTensor& out, const PathNode& path, int depth) const {
    std::vector<Parameters::Entry> params;
    const uint8_t* p = v.data;
    const uint8_t* end = p + v.size;
    while (p < end) {
      const uint8_t* start = p;
      uint32_t tag = read_tag(p, end, &path);
      switch (tag) {
        case (1 << 3) | 2: out.name = read_string(p, end, {&path, "name", -1}, start); continue;
        case (2 << 3) | 2: {
          const PathNode node{&path, "parameters", int64_t(params.size())};
          parse_entry(read_bytes(p, end, node, start), params, node, depth - 1);
          continue;
        }
        default: skip_field(p, end, tag, start, &path, depth);
      }
    }
    finish_map(params, out.parameters);
  }

  const uint8_t* base_;
};

// --- decode_contents --------------------------------------------------------------------------

// IEEE binary16 from a double, rounding to nearest even (what numpy's cast does).
uint16_t half_from_double(double d) {
  uint64_t bits;
  std::memcpy(&bits, &d, 8);
  const uint16_t sign = static_cast<uint16_t>((bits >> 48) & 0x8000);
  const int exp = static_cast<int>((bits >> 52) & 0x7FF);
  uint64_t mant = bits & ((uint64_t(1) << 52) - 1);
  if (exp == 0x7FF) return sign | 0x7C00 | (mant ? 0x200 | static_cast<uint16_t>(mant >> 42) : 0);
  const int e = exp - 1023 + 15;  // the half's biased exponent
  if (e >= 31) return sign | 0x7C00;
  int shift;  // bits of the 53-bit significand to drop
  uint64_t sig = mant | (exp ? uint64_t(1) << 52 : 0);
  uint16_t base;
  if (e <= 0) {  // subnormal half (or zero)
    shift = 42 + 1 - e;
    if (shift > 63) return sign;
    base = 0;
  } else {
    shift = 42;
    sig &= (uint64_t(1) << 52) - 1;
    base = static_cast<uint16_t>(e << 10);
  }
  uint64_t kept = sig >> shift;
  uint64_t rest = sig & ((uint64_t(1) << shift) - 1);
  uint64_t half_way = uint64_t(1) << (shift - 1);
  uint32_t h = base + static_cast<uint32_t>(kept);
  if (rest > half_way || (rest == half_way && (kept & 1))) ++h;  // a carry into the exponent is right
  return sign | static_cast<uint16_t>(h);
}

std::string spell(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof buf, v);  // the shortest form that reads back
  return std::string(buf, r.ptr);
}
template <typename T>
std::string spell(T v) {
  if constexpr (std::is_same_v<T, bool>) return v ? "true" : "false";
  else if constexpr (std::is_floating_point_v<T>) return spell(static_cast<double>(v));
  else return std::to_string(v);
}

std::string expected_value(DataType dtype) {
  switch (dtype) {
    case DataType::kUint8: return "an integer in [0, 255] for UINT8";
    case DataType::kUint16: return "an integer in [0, 65535] for UINT16";
    case DataType::kUint32: return "an integer in [0, 4294967295] for UINT32";
    case DataType::kUint64: return "an integer in [0, 18446744073709551615] for UINT64";
    case DataType::kInt8: return "an integer in [-128, 127] for INT8";
    case DataType::kInt16: return "an integer in [-32768, 32767] for INT16";
    case DataType::kInt32: return "an integer in [-2147483648, 2147483647] for INT32";
    case DataType::kInt64: return "an integer in [-9223372036854775808, 9223372036854775807] for INT64";
    case DataType::kFp16: return "a number in [-65504, 65504] (or NaN, +-Infinity) for FP16";
    case DataType::kFp32: return "a number in [-3.4028235e+38, 3.4028235e+38] (or NaN, +-Infinity) for FP32";
    case DataType::kFp64:
      return "a number in [-1.7976931348623157e+308, 1.7976931348623157e+308] (or NaN, +-Infinity) for FP64";
    case DataType::kBool: return "true or false for BOOL";
    case DataType::kBytes: return "a string for BYTES";
    default: return std::string("no value for ") + datatype_name(dtype);
  }
}

template <typename Dst, typename Src>
bool in_range(Src v) {
  if constexpr (std::is_signed_v<Src> == std::is_signed_v<Dst>) {
    return v >= std::numeric_limits<Dst>::lowest() && v <= std::numeric_limits<Dst>::max();
  } else if constexpr (std::is_signed_v<Src>) {  // signed into unsigned
    return v >= 0 && static_cast<std::make_unsigned_t<Src>>(v) <= std::numeric_limits<Dst>::max();
  } else {  // unsigned into signed
    return v <= static_cast<std::make_unsigned_t<Dst>>(std::numeric_limits<Dst>::max());
  }
}

// Writes element `i` (value v) as dtype at out; false when the value rules refuse it.
template <typename T>
bool store(T v, DataType dtype, uint8_t* out) {
  constexpr bool is_bool = std::is_same_v<T, bool>;
  constexpr bool is_float = std::is_floating_point_v<T>;
  auto put = [&](auto x) { std::memcpy(out, &x, sizeof x); };
  if constexpr (is_bool) {
    if (dtype != DataType::kBool) return false;
    put(static_cast<uint8_t>(v));
    return true;
  } else {
    switch (dtype) {
      case DataType::kFp64: put(static_cast<double>(v)); return true;
      case DataType::kFp32: {
        const auto f = static_cast<float>(v);
        if (std::isinf(f) && !std::isinf(static_cast<double>(v))) return false;
        put(f);
        return true;
      }
      case DataType::kFp16: {
        const uint16_t h = half_from_double(static_cast<double>(v));
        if ((h & 0x7FFF) == 0x7C00 && !std::isinf(static_cast<double>(v))) return false;
        put(h);
        return true;
      }
      default: break;
    }
    if constexpr (is_float) {
      return false;  // no float fills an integer datatype, not even 3.0
    } else {
      switch (dtype) {
#define MS_INTEGER_CASE(K, C) \
  case DataType::K:           \
    if (!in_range<C>(v)) return false; \
    put(static_cast<C>(v));   \
    return true;
        MS_INTEGER_CASE(kUint8, uint8_t)
        MS_INTEGER_CASE(kUint16, uint16_t)
        MS_INTEGER_CASE(kUint32, uint32_t)
        MS_INTEGER_CASE(kUint64, uint64_t)
        MS_INTEGER_CASE(kInt8, int8_t)
        MS_INTEGER_CASE(kInt16, int16_t)
        MS_INTEGER_CASE(kInt32, int32_t)
        MS_INTEGER_CASE(kInt64, int64_t)
#undef MS_INTEGER_CASE
        default: return false;
      }
    }
  }
}

template <ContentsField F>
Status decode_numeric(const InferInputTensor& input, const ContentsElements& elements, DataType dtype, uint8_t* out) {
  const size_t width = element_size(dtype);
  size_t i = 0;
  Status status;
  for_each_element<F>(elements, [&](auto v) {
    if (!status.is_ok()) return;
    if (!store(v, dtype, out + i * width)) {
      status = {StatusCode::kInvalidArgument, modelserve::detail::concat("input '", input.name.str(), "': element ", i, " is ",
                                                             spell(v), ", expected ", expected_value(dtype))};
    }
    ++i;
  });
  return status;
}

}  // namespace

const InferParameter* Parameters::find(std::string_view key) const {
  auto it = std::lower_bound(entries.begin(), entries.end(), key,
                             [](const Entry& e, std::string_view k) { return e.key.str() < k; });
  return it != entries.end() && it->key.str() == key ? &it->value : nullptr;
}

const char* contents_field_name(ContentsField field) {
  static const char* const names[kNumContentsFields] = {
      "bool_contents", "int_contents", "int64_contents", "uint_contents",
      "uint64_contents", "fp32_contents", "fp64_contents", "bytes_contents"};
  return names[static_cast<int>(field)];
}

int InferTensorContents::populated_count() const {
  return static_cast<int>(std::count_if(fields.begin(), fields.end(), [](const ContentsElements& e) { return e.count; }));
}

Status parse_infer_request(const uint8_t* data, size_t size, InferRequest& out) {
  out = InferRequest{};
  try {
    Parser(data).parse_request(data, data + size, out);
  } catch (const Error& e) {
    return e.status();
  }
  return Status::ok();
}

size_t serialized_bytes_size(const ContentsElements& elements) {
  size_t n = 0;
  for (const ByteView& e : elements.elements) n += 4 + e.size;
  return n;
}

Status decode_contents(const InferInputTensor& input, ContentsField field, DataType dtype, void* out,
                       size_t out_size) {
  const ContentsElements& elements = input.contents[field];
  auto* dst = static_cast<uint8_t*>(out);
  if (field == ContentsField::kBytes) {
    if (dtype != DataType::kBytes) {
      return {StatusCode::kInvalidArgument,
              modelserve::detail::concat("input '", input.name.str(), "': bytes_contents cannot fill a ", datatype_name(dtype),
                             " tensor; expected ", expected_value(dtype))};
    }
    if (out_size != serialized_bytes_size(elements)) {
      return {StatusCode::kInternal, modelserve::detail::concat("decode_contents: ", out_size, " bytes for ",
                                                    serialized_bytes_size(elements), " of BYTES")};
    }
    for (const ByteView& e : elements.elements) {
      if (e.size > std::numeric_limits<uint32_t>::max()) {
        return {StatusCode::kInvalidArgument,
                modelserve::detail::concat("input '", input.name.str(), "': an element of ", e.size, " bytes exceeds 4 GiB")};
      }
      const auto len = static_cast<uint32_t>(e.size);
      std::memcpy(dst, &len, 4);
      if (e.size) std::memcpy(dst + 4, e.data, e.size);
      dst += 4 + e.size;
    }
    return Status::ok();
  }
  if (dtype == DataType::kBytes || dtype == DataType::kBf16) {
    if (elements.count == 0) return Status::ok();
    return {StatusCode::kInvalidArgument,
            modelserve::detail::concat("input '", input.name.str(), "': ", contents_field_name(field), " cannot fill a ",
                           datatype_name(dtype), " tensor; expected ", expected_value(dtype))};
  }
  if (out_size != element_size(dtype) * elements.count) {
    return {StatusCode::kInternal, modelserve::detail::concat("decode_contents: ", out_size, " bytes for ", elements.count,
                                                  " elements of ", datatype_name(dtype))};
  }
  switch (field) {
    case ContentsField::kBool: return decode_numeric<ContentsField::kBool>(input, elements, dtype, dst);
    case ContentsField::kInt: return decode_numeric<ContentsField::kInt>(input, elements, dtype, dst);
    case ContentsField::kInt64: return decode_numeric<ContentsField::kInt64>(input, elements, dtype, dst);
    case ContentsField::kUint: return decode_numeric<ContentsField::kUint>(input, elements, dtype, dst);
    case ContentsField::kUint64: return decode_numeric<ContentsField::kUint64>(input, elements, dtype, dst);
    case ContentsField::kFp32: return decode_numeric<ContentsField::kFp32>(input, elements, dtype, dst);
    case ContentsField::kFp64: return decode_numeric<ContentsField::kFp64>(input, elements, dtype, dst);
    default: return {StatusCode::kInternal, "decode_contents: unknown field"};
  }
}

}  // namespace modelserve::protocol
