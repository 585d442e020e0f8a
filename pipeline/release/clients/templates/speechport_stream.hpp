@@HEADER@@
// The runtime-independent half of the loop: tensor bindings (layout, quantization), ring buffer, log-mel
// frontend, incremental decoder, and a reader for the golden .npy files. No onnxruntime in here.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace speechport {

struct TensorBinding {
    std::string name;               // the tensor's name inside the artifact
    std::vector<int64_t> shape;     // contract layout
    std::vector<int> permutation;   // artifact = contract transposed by this
    std::string dtype;              // float32, int8, uint8, int16, uint16
    float scale;
    int zero_point;

    size_t size() const {
        size_t n = 1;
        for (int64_t d : shape) n *= static_cast<size_t>(d);
        return n;
    }

    std::vector<int64_t> artifact_shape() const {
        std::vector<int64_t> out;
        for (int axis : permutation) out.push_back(shape[axis]);
        return out;
    }

    // gather[k]: the contract-layout index of the artifact's element k
    std::vector<size_t> gather() const {
        const size_t rank = shape.size();
        std::vector<size_t> strides(rank, 1);
        for (size_t axis = rank; axis-- > 1;) strides[axis - 1] = strides[axis] * static_cast<size_t>(shape[axis]);
        const std::vector<int64_t> art = artifact_shape();
        std::vector<size_t> table(size());
        for (size_t k = 0; k < table.size(); ++k) {
            size_t rest = k, source = 0;
            for (size_t axis = rank; axis-- > 0;) {
                source += (rest % static_cast<size_t>(art[axis])) * strides[permutation[axis]];
                rest /= static_cast<size_t>(art[axis]);
            }
            table[k] = source;
        }
        return table;
    }

    size_t element_bytes() const {
        if (dtype == "float32") return 4;
        if (dtype == "int16" || dtype == "uint16") return 2;
        if (dtype == "int8" || dtype == "uint8") return 1;
        throw std::runtime_error("unsupported dtype " + dtype + " for tensor " + name);
    }

    // contract-layout floats -> the artifact's layout and dtype (round half to even, clamped)
    void write(const std::vector<float>& values, std::vector<uint8_t>& bytes) const {
        const std::vector<size_t> table = gather();
        bytes.resize(size() * element_bytes());
        for (size_t k = 0; k < table.size(); ++k) {
            const float x = values[table[k]];
            if (dtype == "float32") {
                std::memcpy(&bytes[k * 4], &x, 4);
            } else {
                const long q = std::lrint(x / scale) + zero_point;  // default rounding mode: to nearest even
                if (dtype == "int8") {
                    const int8_t v = static_cast<int8_t>(std::clamp(q, -128L, 127L));
                    std::memcpy(&bytes[k], &v, 1);
                } else if (dtype == "uint8") {
                    bytes[k] = static_cast<uint8_t>(std::clamp(q, 0L, 255L));
                } else if (dtype == "uint16") {  // the DSP's 16-bit activations
                    const uint16_t v = static_cast<uint16_t>(std::clamp(q, 0L, 65535L));
                    std::memcpy(&bytes[k * 2], &v, 2);
                } else {
                    const int16_t v = static_cast<int16_t>(std::clamp(q, -32768L, 32767L));
                    std::memcpy(&bytes[k * 2], &v, 2);
                }
            }
        }
    }

    // the artifact's values -> contract-layout floats (dequantized)
    void read(const void* data, std::vector<float>& values) const {
        const std::vector<size_t> table = gather();
        values.resize(size());
        const uint8_t* raw = static_cast<const uint8_t*>(data);
        for (size_t k = 0; k < table.size(); ++k) {
            float x;
            if (dtype == "float32") {
                std::memcpy(&x, raw + k * 4, 4);
            } else if (dtype == "int8") {
                x = scale * (static_cast<int8_t>(raw[k]) - zero_point);
            } else if (dtype == "uint8") {
                x = scale * (static_cast<int>(raw[k]) - zero_point);
            } else if (dtype == "uint16") {
                uint16_t v;
                std::memcpy(&v, raw + k * 2, 2);
                x = scale * (static_cast<long>(v) - zero_point);
            } else {
                int16_t v;
                std::memcpy(&v, raw + k * 2, 2);
                x = scale * (v - zero_point);
            }
            values[table[k]] = x;
        }
    }
};

// Raw microphone samples. When the loop falls behind and the buffer is full, the oldest whole chunks are
// dropped and counted, so latency stays bounded.
class RingBuffer {
public:
    RingBuffer(size_t capacity_chunks, size_t chunk) : data_(capacity_chunks * chunk), chunk_(chunk) {}

    void write(const float* samples, size_t count) {
        std::lock_guard<std::mutex> guard(lock_);
        if (size_ + count > data_.size()) {
            const size_t drop = (size_ + count - data_.size() + chunk_ - 1) / chunk_;
            const size_t drop_samples = std::min(drop * chunk_, size_);
            start_ = (start_ + drop_samples) % data_.size();
            size_ -= drop_samples;
            dropped_chunks_ += drop;
        }
        for (size_t i = 0; i < count; ++i) data_[(start_ + size_ + i) % data_.size()] = samples[i];
        size_ += count;
    }

    bool read_chunk(std::vector<float>& out) {
        std::lock_guard<std::mutex> guard(lock_);
        if (size_ < chunk_) return false;
        out.resize(chunk_);
        for (size_t i = 0; i < chunk_; ++i) out[i] = data_[(start_ + i) % data_.size()];
        start_ = (start_ + chunk_) % data_.size();
        size_ -= chunk_;
        return true;
    }

    void clear() {
        std::lock_guard<std::mutex> guard(lock_);
        start_ = size_ = 0;
    }

    size_t dropped_chunks() const { return dropped_chunks_; }

private:
    std::vector<float> data_;
    size_t chunk_, start_ = 0, size_ = 0, dropped_chunks_ = 0;
    std::mutex lock_;
};

// The contract's log-mel frontend: Hann window, radix-2 FFT, HTK mel filterbank, ln(mel + floor), with the left
// context kept across chunks.
class LogMel {
public:
    LogMel(int n_fft, int win, int hop, int n_mels, int sample_rate, double f_min, double f_max, double log_floor)
        : n_fft_(n_fft), win_(win), hop_(hop), n_mels_(n_mels), log_floor_(log_floor), window_(win),
          mel_((n_fft / 2 + 1) * n_mels), history_(win - hop, 0.0) {
        const double pi = std::acos(-1.0);
        for (int i = 0; i < win; ++i) window_[i] = 0.5 - 0.5 * std::cos(2.0 * pi * i / win);
        auto hz_to_mel = [](double hz) { return 2595.0 * std::log10(1.0 + hz / 700.0); };
        auto mel_to_hz = [](double m) { return 700.0 * (std::pow(10.0, m / 2595.0) - 1.0); };
        const double low = hz_to_mel(f_min), high = hz_to_mel(f_max);
        std::vector<double> edges(n_mels + 2);
        for (int i = 0; i < n_mels + 2; ++i) edges[i] = mel_to_hz(low + i * (high - low) / (n_mels + 1));
        for (int k = 0; k <= n_fft / 2; ++k) {
            const double f = static_cast<double>(k) * sample_rate / n_fft;
            for (int m = 0; m < n_mels; ++m) {
                const double rising = (f - edges[m]) / (edges[m + 1] - edges[m]);
                const double falling = (edges[m + 2] - f) / (edges[m + 2] - edges[m + 1]);
                mel_[k * n_mels + m] = std::max(0.0, std::min(rising, falling));
            }
        }
    }

    void reset() { std::fill(history_.begin(), history_.end(), 0.0); }

    // one chunk (a whole number of hops) -> frames, written as out[t * frame_stride + m * feature_stride]
    void push(const std::vector<float>& samples, std::vector<float>& out, size_t frame_stride, size_t feature_stride) {
        std::vector<double> signal(history_);
        for (float x : samples) signal.push_back(x);
        std::vector<double> re(n_fft_), im(n_fft_);
        for (size_t t = 0; t < samples.size() / hop_; ++t) {
            std::fill(re.begin(), re.end(), 0.0);
            std::fill(im.begin(), im.end(), 0.0);
            for (int i = 0; i < win_; ++i) re[i] = signal[t * hop_ + i] * window_[i];
            fft(re, im);
            for (int m = 0; m < n_mels_; ++m) {
                double energy = 0.0;
                for (int k = 0; k <= n_fft_ / 2; ++k) energy += (re[k] * re[k] + im[k] * im[k]) * mel_[k * n_mels_ + m];
                out[t * frame_stride + m * feature_stride] = static_cast<float>(std::log(energy + log_floor_));
            }
        }
        std::copy(signal.end() - history_.size(), signal.end(), history_.begin());
    }

private:
    static void fft(std::vector<double>& re, std::vector<double>& im) {
        const size_t n = re.size();
        const double pi = std::acos(-1.0);
        for (size_t i = 1, j = 0; i < n; ++i) {
            size_t bit = n >> 1;
            for (; j & bit; bit >>= 1) j ^= bit;
            j ^= bit;
            if (i < j) {
                std::swap(re[i], re[j]);
                std::swap(im[i], im[j]);
            }
        }
        for (size_t length = 2; length <= n; length <<= 1) {
            const double angle = -2.0 * pi / static_cast<double>(length);
            for (size_t i = 0; i < n; i += length) {
                for (size_t k = 0; k < length / 2; ++k) {
                    const double wr = std::cos(angle * k), wi = std::sin(angle * k);
                    const size_t a = i + k, b = i + k + length / 2;
                    const double vr = re[b] * wr - im[b] * wi, vi = re[b] * wi + im[b] * wr;
                    re[b] = re[a] - vr;
                    im[b] = im[a] - vi;
                    re[a] += vr;
                    im[a] += vi;
                }
            }
        }
    }

    int n_fft_, win_, hop_, n_mels_;
    double log_floor_;
    std::vector<double> window_, mel_, history_;
};

// What the contract says, as constants.
namespace contract {
@@CONSTANTS@@
}  // namespace contract

// Greedy CTC across chunk boundaries (merge repeats, drop the blank) and per-frame decisions.
class Decoder {
public:
    void reset() {
        previous_ = -1;
        transcript.clear();
        decisions.assign(contract::OUTPUTS.size(), {});
    }

    void push(size_t o, const std::vector<float>& values) {
        if (decisions.size() != contract::OUTPUTS.size()) decisions.assign(contract::OUTPUTS.size(), {});
        const std::string& kind = contract::OUTPUT_KINDS[o];
        for (int t = 0; t < contract::OUTPUT_FRAMES[o]; ++t) {
            const size_t base = t * contract::OUTPUT_FRAME_STRIDES[o];
            if (kind == "probability") {
                decisions[o].push_back(values[base] >= contract::OUTPUT_THRESHOLDS[o] ? 1 : 0);
                continue;
            }
            int best = 0;
            for (int k = 1; k < contract::OUTPUT_CLASSES[o]; ++k) {
                if (values[base + k * contract::OUTPUT_CLASS_STRIDES[o]] > values[base + best * contract::OUTPUT_CLASS_STRIDES[o]]) best = k;
            }
            if (kind == "ctc_logits" && contract::DECODER == std::string("ctc")) {
                if (best != previous_ && best != contract::BLANK) transcript += contract::VOCABULARY[best > contract::BLANK ? best - 1 : best];
                previous_ = best;
            } else if (kind == "decision_logits") {
                decisions[o].push_back(best);
            }
        }
    }

    std::string transcript;
    std::vector<std::vector<int>> decisions;

private:
    int previous_ = -1;
};

// A float32 little-endian C-order .npy file (what golden/ holds): its shape and values.
struct Npy {
    std::vector<int64_t> shape;
    std::vector<float> values;
};

inline Npy read_npy(const std::string& path) {
    std::ifstream file(path, std::ios::binary);
    if (!file) throw std::runtime_error("cannot open " + path);
    char magic[8];
    file.read(magic, 8);
    if (std::memcmp(magic, "\x93NUMPY", 6) != 0) throw std::runtime_error(path + " is not a .npy file");
    uint32_t header_length = 0;
    if (magic[6] == 1) {
        uint16_t short_length;
        file.read(reinterpret_cast<char*>(&short_length), 2);
        header_length = short_length;
    } else {
        file.read(reinterpret_cast<char*>(&header_length), 4);
    }
    std::string header(header_length, ' ');
    file.read(&header[0], header_length);
    if (header.find("'<f4'") == std::string::npos || header.find("'fortran_order': False") == std::string::npos)
        throw std::runtime_error(path + ": expected float32 little-endian C-order, header " + header);
    Npy npy;
    const size_t open = header.find('(', header.find("'shape'")), close = header.find(')', open);
    std::string dims = header.substr(open + 1, close - open - 1);
    size_t count = 1, position = 0;
    while (position < dims.size()) {
        const size_t comma = dims.find(',', position);
        const std::string item = dims.substr(position, comma == std::string::npos ? std::string::npos : comma - position);
        if (item.find_first_of("0123456789") != std::string::npos) {
            npy.shape.push_back(std::stoll(item));
            count *= static_cast<size_t>(npy.shape.back());
        }
        if (comma == std::string::npos) break;
        position = comma + 1;
    }
    npy.values.resize(count);
    file.read(reinterpret_cast<char*>(npy.values.data()), static_cast<std::streamsize>(count * 4));
    if (!file) throw std::runtime_error(path + " is cut short");
    return npy;
}

}  // namespace speechport
