@@HEADER@@
// The loop on onnxruntime's C API: session, state feedback, and a command line that streams a 16-bit PCM WAV
// file, or replays the bundle's golden vectors (`--golden DIR`) and reports the first difference.
//
//   g++ -std=c++17 -O2 speechport_stream.cpp -I<onnxruntime>/include -L<onnxruntime>/lib -lonnxruntime -o speechport_stream
//   ./speechport_stream model.onnx speech.wav                 # prints the transcript (or decisions)
//   ./speechport_stream model.onnx --golden ../golden         # exit 0 when every step matches
//   ./speechport_stream model.onnx speech.wav --ep QNN backend_path=libQnnHtp.so   # an execution provider
#include <onnxruntime_c_api.h>

#include <cstdio>
#include <iostream>
#include <map>

#include "speechport_stream.hpp"

namespace speechport {

const OrtApi* ort = OrtGetApiBase()->GetApi(ORT_API_VERSION);

void check(OrtStatus* status) {
    if (status == nullptr) return;
    const std::string message = ort->GetErrorMessage(status);
    ort->ReleaseStatus(status);
    throw std::runtime_error("onnxruntime: " + message);
}

ONNXTensorElementDataType element_type(const std::string& dtype) {
    if (dtype == "float32") return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    if (dtype == "int8") return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
    if (dtype == "uint8") return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
    if (dtype == "int16") return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16;
    if (dtype == "uint16") return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16;
    throw std::runtime_error("unsupported dtype " + dtype);
}

// One artifact and its state. step() runs one chunk: the chunk input and every state input in, every output out,
// every state output kept for the next call.
class Model {
public:
    Model(const std::string& path, const std::string& provider, const std::map<std::string, std::string>& provider_options) {
        check(ort->CreateEnv(ORT_LOGGING_LEVEL_WARNING, "speechport", &env_));
        check(ort->CreateSessionOptions(&options_));
        check(ort->SetIntraOpNumThreads(options_, 1));
        if (!provider.empty()) {
            // e.g. QNN with backend_path=libQnnHtp.so for the Hexagon DSP
            std::vector<const char*> keys, values;
            for (const auto& entry : provider_options) {
                keys.push_back(entry.first.c_str());
                values.push_back(entry.second.c_str());
            }
            check(ort->SessionOptionsAppendExecutionProvider(options_, provider.c_str(), keys.data(), values.data(), keys.size()));
        }
        check(ort->CreateSession(env_, path.c_str(), options_, &session_));
        check(ort->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &memory_));
        reset();
    }

    ~Model() {
        ort->ReleaseMemoryInfo(memory_);
        ort->ReleaseSession(session_);
        ort->ReleaseSessionOptions(options_);
        ort->ReleaseEnv(env_);
    }

    // a new utterance: every state input back to its init value
    void reset() {
        state.clear();
        for (size_t s = 0; s < contract::STATE_INPUTS.size(); ++s)
            state.emplace_back(contract::STATE_INPUTS[s].size(), contract::STATE_INIT[s]);
    }

    // one call from explicit state: the chunk input and states in the contract's layout; outputs (states last) back
    std::vector<std::vector<float>> call(const std::vector<float>& feature, const std::vector<std::vector<float>>& states) {
        std::vector<const TensorBinding*> inputs{&contract::INPUT};
        for (const TensorBinding& binding : contract::STATE_INPUTS) inputs.push_back(&binding);
        std::vector<const TensorBinding*> outputs;
        for (const TensorBinding& binding : contract::OUTPUTS) outputs.push_back(&binding);
        for (const TensorBinding& binding : contract::STATE_OUTPUTS) outputs.push_back(&binding);

        std::vector<std::vector<uint8_t>> bytes(inputs.size());
        std::vector<OrtValue*> input_values(inputs.size(), nullptr);
        std::vector<const char*> input_names, output_names;
        for (size_t i = 0; i < inputs.size(); ++i) {
            inputs[i]->write(i == 0 ? feature : states[i - 1], bytes[i]);
            const std::vector<int64_t> shape = inputs[i]->artifact_shape();
            check(ort->CreateTensorWithDataAsOrtValue(memory_, bytes[i].data(), bytes[i].size(), shape.data(), shape.size(),
                                                      element_type(inputs[i]->dtype), &input_values[i]));
            input_names.push_back(inputs[i]->name.c_str());
        }
        for (const TensorBinding* binding : outputs) output_names.push_back(binding->name.c_str());
        std::vector<OrtValue*> output_values(outputs.size(), nullptr);
        check(ort->Run(session_, nullptr, input_names.data(), input_values.data(), input_values.size(), output_names.data(),
                       output_names.size(), output_values.data()));
        std::vector<std::vector<float>> results(outputs.size());
        for (size_t o = 0; o < outputs.size(); ++o) {
            void* data = nullptr;
            check(ort->GetTensorMutableData(output_values[o], &data));
            outputs[o]->read(data, results[o]);
            ort->ReleaseValue(output_values[o]);
        }
        for (OrtValue* value : input_values) ort->ReleaseValue(value);
        return results;
    }

    // one closed-loop call: the outputs, with every state output fed back as its state input next time
    std::vector<std::vector<float>> step(const std::vector<float>& feature) {
        std::vector<std::vector<float>> results = call(feature, state);
        const size_t first_state = contract::OUTPUTS.size();
        for (size_t s = 0; s < state.size(); ++s) state[s] = results[first_state + s];
        return results;
    }

    std::vector<std::vector<float>> state;

private:
    OrtEnv* env_ = nullptr;
    OrtSessionOptions* options_ = nullptr;
    OrtSession* session_ = nullptr;
    OrtMemoryInfo* memory_ = nullptr;
};

// The whole loop: audio in (any block size), chunks out of the ring buffer, frontend, model, decoder.
class StreamingRecognizer {
public:
    StreamingRecognizer(Model& model, size_t buffer_chunks = 25)
        : model_(model), ring_(buffer_chunks, contract::CHUNK_SAMPLES),
          frontend_(contract::N_FFT, contract::WIN_LENGTH, contract::HOP_LENGTH, contract::N_MELS, contract::SAMPLE_RATE,
                    contract::F_MIN, contract::F_MAX, contract::LOG_FLOOR),
          feature_(contract::INPUT.size()) {
        reset();
    }

    void reset() {
        model_.reset();
        frontend_.reset();
        ring_.clear();
        decoder.reset();
    }

    void push_audio(const float* samples, size_t count) { ring_.write(samples, count); }

    size_t process() {
        size_t chunks = 0;
        while (ring_.read_chunk(pcm_)) {
            if (contract::LOGMEL) {
                frontend_.push(pcm_, feature_, contract::FRAME_STRIDE, contract::FEATURE_STRIDE);
            } else {
                feature_ = pcm_;
            }
            const std::vector<std::vector<float>> results = model_.step(feature_);
            for (size_t o = 0; o < contract::OUTPUTS.size(); ++o) decoder.push(o, results[o]);
            ++chunks;
        }
        return chunks;
    }

    size_t dropped_chunks() const { return ring_.dropped_chunks(); }
    Decoder decoder;

private:
    Model& model_;
    RingBuffer ring_;
    LogMel frontend_;
    std::vector<float> pcm_, feature_;
};

// 16-bit PCM mono WAV at the contract's sample rate -> floats in [-1, 1]
std::vector<float> read_wav(const std::string& path) {
    std::ifstream file(path, std::ios::binary);
    if (!file) throw std::runtime_error("cannot open " + path);
    char riff[12];
    file.read(riff, 12);
    if (std::memcmp(riff, "RIFF", 4) != 0 || std::memcmp(riff + 8, "WAVE", 4) != 0) throw std::runtime_error(path + " is not a WAV file");
    uint16_t format = 0, channels = 0, bits = 0;
    uint32_t rate = 0;
    while (file) {
        char id[4];
        uint32_t length = 0;
        file.read(id, 4);
        file.read(reinterpret_cast<char*>(&length), 4);
        if (!file) break;
        if (std::memcmp(id, "fmt ", 4) == 0) {
            std::vector<char> fmt(length);
            file.read(fmt.data(), length);
            std::memcpy(&format, &fmt[0], 2);
            std::memcpy(&channels, &fmt[2], 2);
            std::memcpy(&rate, &fmt[4], 4);
            std::memcpy(&bits, &fmt[14], 2);
        } else if (std::memcmp(id, "data", 4) == 0) {
            if (format != 1 || channels != 1 || bits != 16 || rate != static_cast<uint32_t>(contract::SAMPLE_RATE))
                throw std::runtime_error(path + ": expected 16-bit PCM mono at " + std::to_string(contract::SAMPLE_RATE) + " Hz");
            std::vector<int16_t> pcm(length / 2);
            file.read(reinterpret_cast<char*>(pcm.data()), static_cast<std::streamsize>(pcm.size() * 2));
            std::vector<float> samples(pcm.size());
            for (size_t i = 0; i < pcm.size(); ++i) samples[i] = pcm[i] / 32768.0f;
            return samples;
        } else {
            file.seekg(length + (length & 1), std::ios::cur);
        }
    }
    throw std::runtime_error(path + " has no data chunk");
}

// |got - expected| <= atol + rtol_of_range * max|expected|, as golden.json says
bool differs(const std::string& what, size_t step, const std::vector<float>& got, const float* expected, size_t count, float range) {
    const float allowed = 1e-5f + 1e-4f * range;
    for (size_t i = 0; i < count; ++i) {
        if (std::fabs(got[i] - expected[i]) > allowed) {
            std::fprintf(stderr, "%s step %zu index %zu: got %g, expected %g (allowed %g)\n", what.c_str(), step, i, got[i], expected[i], allowed);
            return true;
        }
    }
    return false;
}

float max_abs(const Npy& npy) {
    float m = 0;
    for (float x : npy.values) m = std::max(m, std::fabs(x));
    return m;
}

// the golden vectors: every call from the recorded state, then the closed loop from the recorded audio
int replay_golden(Model& model, const std::string& dir) {
    const Npy audio = read_npy(dir + "/audio.npy");
    const Npy features = read_npy(dir + "/input." + std::string(contract::INPUT_CONTRACT_NAME) + ".npy");
    std::vector<Npy> states, expected;
    for (const char* name : contract::STATE_INPUT_CONTRACT_NAMES) states.push_back(read_npy(dir + "/state_in." + name + ".npy"));
    for (const char* name : contract::OUTPUT_CONTRACT_NAMES) expected.push_back(read_npy(dir + "/output." + name + ".npy"));
    const size_t steps = static_cast<size_t>(audio.shape[0]);
    const size_t feature_size = contract::INPUT.size();
    for (size_t k = 0; k < steps; ++k) {
        std::vector<float> feature(features.values.begin() + k * feature_size, features.values.begin() + (k + 1) * feature_size);
        std::vector<std::vector<float>> state;
        for (const Npy& s : states) {
            const size_t n = s.values.size() / steps;
            state.emplace_back(s.values.begin() + k * n, s.values.begin() + (k + 1) * n);
        }
        const std::vector<std::vector<float>> results = model.call(feature, state);
        for (size_t o = 0; o < results.size(); ++o) {
            const size_t n = results[o].size();
            if (differs("output." + std::string(contract::OUTPUT_CONTRACT_NAMES[o]) + " (one call)", k, results[o], &expected[o].values[k * n], n, max_abs(expected[o])))
                return 1;
        }
    }
    model.reset();
    LogMel frontend(contract::N_FFT, contract::WIN_LENGTH, contract::HOP_LENGTH, contract::N_MELS, contract::SAMPLE_RATE,
                    contract::F_MIN, contract::F_MAX, contract::LOG_FLOOR);
    std::vector<float> feature(feature_size);
    const size_t chunk = contract::CHUNK_SAMPLES;
    for (size_t k = 0; k < steps; ++k) {
        std::vector<float> pcm(audio.values.begin() + k * chunk, audio.values.begin() + (k + 1) * chunk);
        if (contract::LOGMEL) frontend.push(pcm, feature, contract::FRAME_STRIDE, contract::FEATURE_STRIDE); else feature = pcm;
        if (differs("input (frontend)", k, feature, &features.values[k * feature_size], feature_size, max_abs(features))) return 1;
        const std::vector<std::vector<float>> results = model.step(feature);
        for (size_t o = 0; o < results.size(); ++o) {
            const size_t n = results[o].size();
            if (differs("output." + std::string(contract::OUTPUT_CONTRACT_NAMES[o]) + " (closed loop)", k, results[o], &expected[o].values[k * n], n, max_abs(expected[o])))
                return 1;
        }
    }
    std::printf("golden vectors: %zu steps equal (one call and closed loop)\n", steps);
    return 0;
}

}  // namespace speechport

int main(int argc, char** argv) {
    using namespace speechport;
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s MODEL.onnx (AUDIO.wav | --golden DIR) [--ep NAME [key=value ...]]\n", argv[0]);
        return 2;
    }
    std::string provider;
    std::map<std::string, std::string> provider_options;
    for (int i = 3; i < argc; ++i) {
        if (std::string(argv[i]) == "--golden") continue;
        if (std::string(argv[i]) == "--ep" && i + 1 < argc) {
            provider = argv[++i];
            for (++i; i < argc; ++i) {
                const std::string option = argv[i];
                const size_t equals = option.find('=');
                if (equals != std::string::npos) provider_options[option.substr(0, equals)] = option.substr(equals + 1);
            }
        }
    }
    try {
        Model model(argv[1], provider, provider_options);
        if (std::string(argv[2]) == "--golden") return replay_golden(model, argv[3]);
        StreamingRecognizer recognizer(model);
        const std::vector<float> audio = read_wav(argv[2]);
        const size_t block = contract::SAMPLE_RATE / 100;  // 10 ms, as a microphone callback delivers
        for (size_t offset = 0; offset < audio.size(); offset += block) {
            recognizer.push_audio(&audio[offset], std::min(block, audio.size() - offset));
            recognizer.process();
        }
        std::printf("%s\n", recognizer.decoder.transcript.c_str());
        for (size_t o = 0; o < recognizer.decoder.decisions.size(); ++o) {
            for (int decision : recognizer.decoder.decisions[o]) std::printf("%d", decision);
            if (!recognizer.decoder.decisions[o].empty()) std::printf("\n");
        }
        std::fprintf(stderr, "dropped chunks: %zu\n", recognizer.dropped_chunks());
    } catch (const std::exception& error) {
        std::fprintf(stderr, "speechport_stream: %s\n", error.what());
        return 1;
    }
    return 0;
}
