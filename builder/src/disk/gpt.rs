//! GPT partition tables, through gptman.
