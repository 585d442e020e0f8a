@@HEADER@@
package speechport

import java.nio.ByteBuffer
import java.nio.ByteOrder
import org.tensorflow.lite.Interpreter

/** One tensor: its name inside the .tflite, its shape in the contract's layout, the permutation into the artifact's layout, dtype and quantization. */
class TensorBinding(
    val name: String,
    val shape: IntArray,
    val permutation: IntArray,
    val dtype: String,
    val scale: Float,
    val zeroPoint: Int,
) {
    val size: Int = shape.fold(1) { a, b -> a * b }

    /** gather[k]: the contract-layout index of the artifact's element k (artifact = contract transposed by `permutation`). */
    val gather: IntArray = gatherTable(shape, permutation)

    private val bytesPerElement: Int = when (dtype) {
        "float32" -> 4
        "int16" -> 2
        "int8", "uint8" -> 1
        else -> throw IllegalArgumentException("unsupported dtype $dtype for tensor $name")
    }

    fun newBuffer(): ByteBuffer = ByteBuffer.allocateDirect(size * bytesPerElement).order(ByteOrder.nativeOrder())

    /** Contract-layout float32 values -> the artifact's layout and dtype (quantized with round-half-even and clamping). */
    fun write(values: FloatArray, buffer: ByteBuffer) {
        buffer.rewind()
        for (k in 0 until size) {
            val x = values[gather[k]]
            when (dtype) {
                "float32" -> buffer.putFloat(x)
                "int8" -> buffer.put(quantize(x, -128, 127).toByte())
                "uint8" -> buffer.put(quantize(x, 0, 255).toByte())
                "int16" -> buffer.putShort(quantize(x, -32768, 32767).toShort())
            }
        }
        buffer.rewind()
    }

    /** The artifact's values -> contract-layout float32 (dequantized). */
    fun read(buffer: ByteBuffer, values: FloatArray) {
        buffer.rewind()
        for (k in 0 until size) {
            values[gather[k]] = when (dtype) {
                "float32" -> buffer.getFloat()
                "int8" -> scale * (buffer.get().toInt() - zeroPoint)
                "uint8" -> scale * ((buffer.get().toInt() and 0xff) - zeroPoint)
                else -> scale * (buffer.getShort().toInt() - zeroPoint)
            }
        }
        buffer.rewind()
    }

    private fun quantize(x: Float, low: Int, high: Int): Int {
        val q = Math.rint((x / scale).toDouble()).toInt() + zeroPoint
        return q.coerceIn(low, high)
    }
}

fun gatherTable(shape: IntArray, permutation: IntArray): IntArray {
    val rank = shape.size
    val size = shape.fold(1) { a, b -> a * b }
    val strides = IntArray(rank)
    var step = 1
    for (axis in rank - 1 downTo 0) {
        strides[axis] = step
        step *= shape[axis]
    }
    val artifactShape = IntArray(rank) { shape[permutation[it]] }
    val index = IntArray(rank)
    return IntArray(size) { k ->
        var rest = k
        for (axis in rank - 1 downTo 0) {
            index[axis] = rest % artifactShape[axis]
            rest /= artifactShape[axis]
        }
        var source = 0
        for (axis in 0 until rank) source += index[axis] * strides[permutation[axis]]
        source
    }
}

/** Raw microphone samples. When the loop falls behind and the buffer is full, the oldest whole chunks are dropped and counted. */
class RingBuffer(capacityChunks: Int, private val chunk: Int) {
    private val data = FloatArray(capacityChunks * chunk)
    private var start = 0
    private var size = 0
    var droppedChunks = 0
        private set

    @Synchronized
    fun write(samples: FloatArray, count: Int = samples.size) {
        val overflow = size + count - data.size
        if (overflow > 0) {
            val drop = (overflow + chunk - 1) / chunk
            val dropSamples = minOf(drop * chunk, size)
            start = (start + dropSamples) % data.size
            size -= dropSamples
            droppedChunks += drop
        }
        for (i in 0 until count) data[(start + size + i) % data.size] = samples[i]
        size += count
    }

    /** Copies the next whole chunk into `out` and returns true, or returns false if less than a chunk is buffered. */
    @Synchronized
    fun readChunk(out: FloatArray): Boolean {
        if (size < chunk) return false
        for (i in 0 until chunk) out[i] = data[(start + i) % data.size]
        start = (start + chunk) % data.size
        size -= chunk
        return true
    }

    @Synchronized
    fun clear() {
        start = 0
        size = 0
    }
}

/** The contract's log-mel frontend: Hann window, radix-2 FFT, HTK mel filterbank, ln(mel + floor), left context kept across chunks. */
class LogMel(
    private val nFft: Int,
    private val win: Int,
    private val hop: Int,
    private val nMels: Int,
    sampleRate: Int,
    fMin: Double,
    fMax: Double,
    private val logFloor: Double,
) {
    private val window = DoubleArray(win) { 0.5 - 0.5 * Math.cos(2.0 * Math.PI * it / win) }
    private val bins = nFft / 2 + 1
    private val mel = Array(bins) { DoubleArray(nMels) }
    private val history = DoubleArray(win - hop)
    private val re = DoubleArray(nFft)
    private val im = DoubleArray(nFft)

    init {
        fun hzToMel(hz: Double) = 2595.0 * Math.log10(1.0 + hz / 700.0)
        fun melToHz(m: Double) = 700.0 * (Math.pow(10.0, m / 2595.0) - 1.0)
        val low = hzToMel(fMin)
        val high = hzToMel(fMax)
        val edges = DoubleArray(nMels + 2) { melToHz(low + it * (high - low) / (nMels + 1)) }
        for (k in 0 until bins) {
            val f = k.toDouble() * sampleRate / nFft
            for (m in 0 until nMels) {
                val rising = (f - edges[m]) / (edges[m + 1] - edges[m])
                val falling = (edges[m + 2] - f) / (edges[m + 2] - edges[m + 1])
                mel[k][m] = maxOf(0.0, minOf(rising, falling))
            }
        }
    }

    fun reset() = history.fill(0.0)

    /** One chunk of samples (a whole number of hops) -> frames, written as out[t * frameStride + m * featureStride]. */
    fun push(samples: FloatArray, out: FloatArray, frameStride: Int, featureStride: Int) {
        val context = win - hop
        val frames = samples.size / hop
        val signal = DoubleArray(context + samples.size)
        for (i in 0 until context) signal[i] = history[i]
        for (i in samples.indices) signal[context + i] = samples[i].toDouble()
        for (t in 0 until frames) {
            re.fill(0.0)
            im.fill(0.0)
            for (i in 0 until win) re[i] = signal[t * hop + i] * window[i]
            fft(re, im)
            for (m in 0 until nMels) {
                var energy = 0.0
                for (k in 0 until bins) energy += (re[k] * re[k] + im[k] * im[k]) * mel[k][m]
                out[t * frameStride + m * featureStride] = Math.log(energy + logFloor).toFloat()
            }
        }
        for (i in 0 until context) history[i] = signal[signal.size - context + i]
    }

    private fun fft(re: DoubleArray, im: DoubleArray) {
        val n = re.size
        var j = 0
        for (i in 1 until n) {
            var bit = n shr 1
            while (j and bit != 0) {
                j = j xor bit
                bit = bit shr 1
            }
            j = j xor bit
            if (i < j) {
                val tr = re[i]; re[i] = re[j]; re[j] = tr
                val ti = im[i]; im[i] = im[j]; im[j] = ti
            }
        }
        var length = 2
        while (length <= n) {
            val angle = -2.0 * Math.PI / length
            for (i in 0 until n step length) {
                for (k in 0 until length / 2) {
                    val wr = Math.cos(angle * k)
                    val wi = Math.sin(angle * k)
                    val ur = re[i + k]
                    val ui = im[i + k]
                    val vr = re[i + k + length / 2] * wr - im[i + k + length / 2] * wi
                    val vi = re[i + k + length / 2] * wi + im[i + k + length / 2] * wr
                    re[i + k] = ur + vr
                    im[i + k] = ui + vi
                    re[i + k + length / 2] = ur - vr
                    im[i + k + length / 2] = ui - vi
                }
            }
            length = length shl 1
        }
    }
}

/** What the contract says, as constants. */
object StreamContract {
@@CONSTANTS@@
}

/**
 * The whole streaming loop for this artifact: push microphone audio, call [process], read [transcript] or decisions.
 * [reset] starts a new utterance (state back to its initial values, frontend context and decoder cleared).
 */
class StreamingRecognizer(model: ByteBuffer, threads: Int = 1, bufferChunks: Int = 25) : AutoCloseable {
    private val interpreter = Interpreter(model, Interpreter.Options().setNumThreads(threads))
    private val c = StreamContract
    private val ring = RingBuffer(bufferChunks, c.CHUNK_SAMPLES)
    private val frontend: LogMel? = if (c.LOGMEL) LogMel(c.N_FFT, c.WIN_LENGTH, c.HOP_LENGTH, c.N_MELS, c.SAMPLE_RATE, c.F_MIN, c.F_MAX, c.LOG_FLOOR) else null
    private val pcm = FloatArray(c.CHUNK_SAMPLES)
    private val feature = FloatArray(c.INPUT.size)
    private val stateValues = Array(c.STATE_INPUTS.size) { FloatArray(c.STATE_INPUTS[it].size) }
    private val outputValues = Array(c.OUTPUTS.size) { FloatArray(c.OUTPUTS[it].size) }
    private val inputSlots: Array<Any>
    private val inputBuffers = HashMap<String, ByteBuffer>()
    private val outputBuffers = HashMap<String, ByteBuffer>()
    private val outputSlots = HashMap<Int, Any>()
    private var previousClass = -1
    private val text = StringBuilder()

    /** Per-frame decisions of each decision output, in order (class index per frame). */
    val decisions = Array(c.OUTPUTS.size) { ArrayList<Int>() }

    val transcript: String get() = text.toString()
    val droppedChunks: Int get() = ring.droppedChunks

    init {
        val inputIndex = HashMap<String, Int>()
        for (i in 0 until interpreter.inputTensorCount) inputIndex[interpreter.getInputTensor(i).name()] = i
        val outputIndex = HashMap<String, Int>()
        for (i in 0 until interpreter.outputTensorCount) outputIndex[interpreter.getOutputTensor(i).name()] = i
        val inputs = arrayOf(c.INPUT) + c.STATE_INPUTS
        val slots = arrayOfNulls<Any>(interpreter.inputTensorCount)
        for (binding in inputs) {
            val index = inputIndex[binding.name] ?: throw IllegalStateException("the model has no input ${binding.name}; it has ${inputIndex.keys}")
            val buffer = binding.newBuffer()
            inputBuffers[binding.name] = buffer
            slots[index] = buffer
        }
        inputSlots = slots.requireNoNulls()
        for (binding in c.OUTPUTS + c.STATE_OUTPUTS) {
            val index = outputIndex[binding.name] ?: throw IllegalStateException("the model has no output ${binding.name}; it has ${outputIndex.keys}")
            val buffer = binding.newBuffer()
            outputBuffers[binding.name] = buffer
            outputSlots[index] = buffer
        }
        reset()
    }

    /** A new utterance: every state input back to its `init` value, frontend context and decoder cleared. */
    fun reset() {
        for (s in stateValues.indices) stateValues[s].fill(c.STATE_INIT[s])
        frontend?.reset()
        ring.clear()
        previousClass = -1
        text.setLength(0)
        decisions.forEach { it.clear() }
    }

    /** Call from the audio thread with each block the microphone delivers (mono, float in [-1, 1], the contract's sample rate). */
    fun pushAudio(samples: FloatArray, count: Int = samples.size) = ring.write(samples, count)

    /** Run every whole chunk buffered so far; returns the number of chunks run. */
    fun process(): Int {
        var chunks = 0
        while (ring.readChunk(pcm)) {
            runChunk(pcm)
            chunks++
        }
        return chunks
    }

    private fun runChunk(samples: FloatArray) {
        if (frontend != null) frontend.push(samples, feature, c.FRAME_STRIDE, c.FEATURE_STRIDE) else samples.copyInto(feature)
        c.INPUT.write(feature, inputBuffers.getValue(c.INPUT.name))
        for (s in stateValues.indices) c.STATE_INPUTS[s].write(stateValues[s], inputBuffers.getValue(c.STATE_INPUTS[s].name))
        outputBuffers.values.forEach { it.rewind() }
        interpreter.runForMultipleInputsOutputs(inputSlots, outputSlots)
        // every state output goes back into its state input on the next call, through both bindings
        for (s in stateValues.indices) c.STATE_OUTPUTS[s].read(outputBuffers.getValue(c.STATE_OUTPUTS[s].name), stateValues[s])
        for (o in c.OUTPUTS.indices) {
            c.OUTPUTS[o].read(outputBuffers.getValue(c.OUTPUTS[o].name), outputValues[o])
            decode(o, outputValues[o])
        }
    }

    private fun decode(o: Int, values: FloatArray) {
        val kind = c.OUTPUT_KINDS[o]
        for (t in 0 until c.OUTPUT_FRAMES[o]) {
            val base = t * c.OUTPUT_FRAME_STRIDES[o]
            if (kind == "probability") {
                decisions[o].add(if (values[base] >= c.OUTPUT_THRESHOLDS[o]) 1 else 0)
                continue
            }
            var best = 0
            for (k in 1 until c.OUTPUT_CLASSES[o]) {
                if (values[base + k * c.OUTPUT_CLASS_STRIDES[o]] > values[base + best * c.OUTPUT_CLASS_STRIDES[o]]) best = k
            }
            if (kind == "ctc_logits" && c.DECODER == "ctc") {
                // greedy CTC across chunk boundaries: merge repeats, drop the blank
                if (best != previousClass && best != c.BLANK) text.append(c.VOCABULARY[if (best > c.BLANK) best - 1 else best])
                previousClass = best
            } else if (kind == "decision_logits") {
                decisions[o].add(best)
            }
        }
    }

    override fun close() = interpreter.close()
}
