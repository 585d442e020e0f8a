@@HEADER@@
import CoreML
import Foundation

/// One tensor: its name inside the .mlpackage, its shape in the contract's layout, the permutation into the
/// artifact's layout, dtype and quantization.
struct TensorBinding {
    let name: String
    let shape: [Int]
    let permutation: [Int]
    let dtype: String
    let scale: Float
    let zeroPoint: Int
    var size: Int { shape.reduce(1, *) }

    /// gather[k]: the contract-layout index of the artifact's element k.
    var gather: [Int] {
        let rank = shape.count
        var strides = [Int](repeating: 1, count: rank)
        var step = 1
        for axis in stride(from: rank - 1, through: 0, by: -1) {
            strides[axis] = step
            step *= shape[axis]
        }
        let artifactShape = permutation.map { shape[$0] }
        return (0..<size).map { k in
            var rest = k
            var source = 0
            for axis in stride(from: rank - 1, through: 0, by: -1) {
                source += (rest % artifactShape[axis]) * strides[permutation[axis]]
                rest /= artifactShape[axis]
            }
            return source
        }
    }

    var artifactShape: [NSNumber] { permutation.map { NSNumber(value: shape[$0]) } }

    /// Contract-layout Float values -> a new MLMultiArray in the artifact's layout and dtype.
    func write(_ values: [Float]) throws -> MLMultiArray {
        let type: MLMultiArrayDataType = dtype == "float16" ? .float16 : (dtype == "int32" ? .int32 : .float32)
        let array = try MLMultiArray(shape: artifactShape, dataType: type)
        fill(array, values)
        return array
    }

    func fill(_ array: MLMultiArray, _ values: [Float]) {
        let table = gather
        for k in 0..<size {
            array[k] = NSNumber(value: quantize(values[table[k]]))
        }
    }

    /// The artifact's values -> contract-layout Float.
    func read(_ array: MLMultiArray) -> [Float] {
        let table = gather
        var values = [Float](repeating: 0, count: size)
        for k in 0..<size {
            let raw = array[k].floatValue
            values[table[k]] = dtype.hasPrefix("int") || dtype.hasPrefix("uint") ? scale * (raw - Float(zeroPoint)) : raw
        }
        return values
    }

    private func quantize(_ x: Float) -> Float {
        switch dtype {
        case "int8": return min(127, max(-128, (x / scale).rounded(.toNearestOrEven) + Float(zeroPoint)))
        case "uint8": return min(255, max(0, (x / scale).rounded(.toNearestOrEven) + Float(zeroPoint)))
        case "int16": return min(32767, max(-32768, (x / scale).rounded(.toNearestOrEven) + Float(zeroPoint)))
        default: return x
        }
    }
}

/// Raw microphone samples. When the loop falls behind and the buffer is full, the oldest whole chunks are
/// dropped and counted.
final class RingBuffer {
    private var data: [Float]
    private let chunk: Int
    private var start = 0
    private var size = 0
    private let lock = NSLock()
    private(set) var droppedChunks = 0

    init(capacityChunks: Int, chunk: Int) {
        self.chunk = chunk
        data = [Float](repeating: 0, count: capacityChunks * chunk)
    }

    func write(_ samples: [Float]) {
        lock.lock()
        defer { lock.unlock() }
        let overflow = size + samples.count - data.count
        if overflow > 0 {
            let drop = (overflow + chunk - 1) / chunk
            let dropSamples = min(drop * chunk, size)
            start = (start + dropSamples) % data.count
            size -= dropSamples
            droppedChunks += drop
        }
        for (i, x) in samples.enumerated() {
            data[(start + size + i) % data.count] = x
        }
        size += samples.count
    }

    func readChunk() -> [Float]? {
        lock.lock()
        defer { lock.unlock() }
        guard size >= chunk else { return nil }
        let out = (0..<chunk).map { data[(start + $0) % data.count] }
        start = (start + chunk) % data.count
        size -= chunk
        return out
    }

    func clear() {
        lock.lock()
        start = 0
        size = 0
        lock.unlock()
    }
}

/// The contract's log-mel frontend: Hann window, radix-2 FFT, HTK mel filterbank, ln(mel + floor), with the
/// left context kept across chunks.
final class LogMel {
    private let nFft: Int, win: Int, hop: Int, nMels: Int, logFloor: Double
    private let window: [Double]
    private var mel: [[Double]]
    private var history: [Double]

    init(nFft: Int, win: Int, hop: Int, nMels: Int, sampleRate: Int, fMin: Double, fMax: Double, logFloor: Double) {
        self.nFft = nFft
        self.win = win
        self.hop = hop
        self.nMels = nMels
        self.logFloor = logFloor
        window = (0..<win).map { 0.5 - 0.5 * cos(2.0 * Double.pi * Double($0) / Double(win)) }
        history = [Double](repeating: 0, count: win - hop)
        func hzToMel(_ hz: Double) -> Double { 2595.0 * log10(1.0 + hz / 700.0) }
        func melToHz(_ m: Double) -> Double { 700.0 * (pow(10.0, m / 2595.0) - 1.0) }
        let low = hzToMel(fMin), high = hzToMel(fMax)
        let edges = (0..<(nMels + 2)).map { melToHz(low + Double($0) * (high - low) / Double(nMels + 1)) }
        mel = (0..<(nFft / 2 + 1)).map { k in
            let f = Double(k) * Double(sampleRate) / Double(nFft)
            return (0..<nMels).map { m in
                let rising = (f - edges[m]) / (edges[m + 1] - edges[m])
                let falling = (edges[m + 2] - f) / (edges[m + 2] - edges[m + 1])
                return max(0.0, min(rising, falling))
            }
        }
    }

    func reset() {
        history = [Double](repeating: 0, count: win - hop)
    }

    /// One chunk (a whole number of hops) -> frames, written as out[t * frameStride + m * featureStride].
    func push(_ samples: [Float], into out: inout [Float], frameStride: Int, featureStride: Int) {
        let signal = history + samples.map { Double($0) }
        for t in 0..<(samples.count / hop) {
            var re = [Double](repeating: 0, count: nFft)
            var im = [Double](repeating: 0, count: nFft)
            for i in 0..<win {
                re[i] = signal[t * hop + i] * window[i]
            }
            LogMel.fft(&re, &im)
            for m in 0..<nMels {
                var energy = 0.0
                for k in 0..<(nFft / 2 + 1) {
                    energy += (re[k] * re[k] + im[k] * im[k]) * mel[k][m]
                }
                out[t * frameStride + m * featureStride] = Float(log(energy + logFloor))
            }
        }
        history = Array(signal.suffix(win - hop))
    }

    static func fft(_ re: inout [Double], _ im: inout [Double]) {
        let n = re.count
        var j = 0
        for i in 1..<n {
            var bit = n >> 1
            while j & bit != 0 {
                j ^= bit
                bit >>= 1
            }
            j ^= bit
            if i < j {
                re.swapAt(i, j)
                im.swapAt(i, j)
            }
        }
        var length = 2
        while length <= n {
            let angle = -2.0 * Double.pi / Double(length)
            for i in stride(from: 0, to: n, by: length) {
                for k in 0..<(length / 2) {
                    let wr = cos(angle * Double(k)), wi = sin(angle * Double(k))
                    let a = i + k, b = i + k + length / 2
                    let vr = re[b] * wr - im[b] * wi
                    let vi = re[b] * wi + im[b] * wr
                    re[b] = re[a] - vr
                    im[b] = im[a] - vi
                    re[a] += vr
                    im[a] += vi
                }
            }
            length <<= 1
        }
    }
}

/// What the contract says, as constants.
enum StreamContract {
@@CONSTANTS@@
}

/// The whole streaming loop for this artifact: `pushAudio` from the microphone, `process()`, read `transcript`
/// or `decisions`; `reset()` starts a new utterance.
final class StreamingRecognizer {
    typealias C = StreamContract
    private let model: MLModel
    private let ring: RingBuffer
    private let frontend: LogMel?
    private var feature = [Float](repeating: 0, count: C.input.size)
    private var stateValues: [[Float]] = []
    private var modelState: Any?  // MLState (iOS 18) when the state lives inside the model
    private var previousClass = -1
    private(set) var transcript = ""
    /// Per-frame decisions of each decision output, in order (class index per frame).
    private(set) var decisions = [[Int]](repeating: [], count: C.outputs.count)
    var droppedChunks: Int { ring.droppedChunks }

    /// `modelURL`: the compiled model (`MLModel.compileModel(at:)` of the bundle's .mlpackage).
    init(modelURL: URL, bufferChunks: Int = 25) throws {
        let configuration = MLModelConfiguration()
        configuration.computeUnits = C.computeUnits
        model = try MLModel(contentsOf: modelURL, configuration: configuration)
        ring = RingBuffer(capacityChunks: bufferChunks, chunk: C.chunkSamples)
        frontend = C.logmel
            ? LogMel(nFft: C.nFft, win: C.winLength, hop: C.hopLength, nMels: C.nMels, sampleRate: C.sampleRate,
                     fMin: C.fMin, fMax: C.fMax, logFloor: C.logFloor)
            : nil
        try reset()
    }

    /// A new utterance: state back to its `init` values (a new model state for a stateful model), frontend
    /// context and decoder cleared.
    func reset() throws {
        stateValues = C.stateInputs.enumerated().map { [Float](repeating: C.stateInit[$0.offset], count: $0.element.size) }
        if C.stateInModel {
            guard #available(iOS 18.0, macOS 15.0, *) else { fatalError("this model keeps its state inside (iOS 18 / macOS 15)") }
            let state = model.makeState()
            for (s, binding) in C.stateInputs.enumerated() where C.stateInit[s] != 0 {
                state.withMultiArray(for: binding.name) { binding.fill($0, stateValues[s]) }
            }
            modelState = state
        }
        frontend?.reset()
        ring.clear()
        previousClass = -1
        transcript = ""
        decisions = [[Int]](repeating: [], count: C.outputs.count)
    }

    /// Call from the audio tap with each block (mono Float in [-1, 1] at the contract's sample rate).
    func pushAudio(_ samples: [Float]) {
        ring.write(samples)
    }

    /// Run every whole chunk buffered so far; returns the number of chunks run.
    @discardableResult
    func process() throws -> Int {
        var chunks = 0
        while let samples = ring.readChunk() {
            try runChunk(samples)
            chunks += 1
        }
        return chunks
    }

    private func runChunk(_ samples: [Float]) throws {
        if let frontend = frontend {
            frontend.push(samples, into: &feature, frameStride: C.frameStride, featureStride: C.featureStride)
        } else {
            feature = samples
        }
        var feeds: [String: Any] = [C.input.name: try C.input.write(feature)]
        let result: MLFeatureProvider
        if C.stateInModel {
            guard #available(iOS 18.0, macOS 15.0, *), let state = modelState as? MLState else { fatalError("no model state") }
            // the model updates its state in place: the app keeps no state tensors
            result = try model.prediction(from: try MLDictionaryFeatureProvider(dictionary: feeds), using: state)
        } else {
            for (s, binding) in C.stateInputs.enumerated() {
                feeds[binding.name] = try binding.write(stateValues[s])
            }
            result = try model.prediction(from: try MLDictionaryFeatureProvider(dictionary: feeds))
            // every state output goes back into its state input on the next call
            for (s, binding) in C.stateOutputs.enumerated() {
                guard let array = result.featureValue(for: binding.name)?.multiArrayValue else { fatalError("no output \(binding.name)") }
                stateValues[s] = binding.read(array)
            }
        }
        for (o, binding) in C.outputs.enumerated() {
            guard let array = result.featureValue(for: binding.name)?.multiArrayValue else { fatalError("no output \(binding.name)") }
            decode(o, binding.read(array))
        }
    }

    private func decode(_ o: Int, _ values: [Float]) {
        for t in 0..<C.outputFrames[o] {
            let base = t * C.outputFrameStrides[o]
            if C.outputKinds[o] == "probability" {
                decisions[o].append(values[base] >= C.outputThresholds[o] ? 1 : 0)
                continue
            }
            var best = 0
            for k in 1..<max(1, C.outputClasses[o]) where values[base + k * C.outputClassStrides[o]] > values[base + best * C.outputClassStrides[o]] {
                best = k
            }
            if C.outputKinds[o] == "ctc_logits" && C.decoder == "ctc" {
                // greedy CTC across chunk boundaries: merge repeats, drop the blank
                if best != previousClass && best != C.blank {
                    let index = best > C.blank ? best - 1 : best
                    transcript.append(C.vocabulary[C.vocabulary.index(C.vocabulary.startIndex, offsetBy: index)])
                }
                previousClass = best
            } else if C.outputKinds[o] == "decision_logits" {
                decisions[o].append(best)
            }
        }
    }
}
